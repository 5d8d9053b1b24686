"""Which augmentation works best for cell images? Every preset, through the trainer, on real sets.

Each run is `python -m trainer.task --data_dir=SET --augment=PRESET --seed=S --deterministic`
with everything else at the trainer's defaults (the synthetic cells take `--synthetic_images`
and a `--test_fraction`, since they have no test split of their own). Its `metrics.json` gives
the test accuracy with its bootstrap interval; the wall time of the whole run is measured here.
Finished runs are appended to `OUT/runs.jsonl` and skipped on a restart, as long as the
trainer's defaults (a fingerprint of `trainer.config.build_config()`) have not changed.

Runs go seed-major (every preset and set at seed 0, then seed 1, ...) and the plain presets
before the fluid variants, so a grid cut short by time still compares like with like.

    nohup python scripts/experiment_augment.py --out runs/augment_study --tag r22 \\
        &> runs/augment_study.log &        # 81 runs, about 1.5 h on the 2-core VM
    python scripts/experiment_augment.py --out runs/augment_study --tag r22 --report_only \\
        --figure docs/images/augment_study.png --publish

`--publish` writes the runs into `cellkeras/augment/study_results.json`, from which every
trainer report draws the study's figure with its own preset marked. The default preset is
chosen from validation accuracy only (`cellkeras.augment.study.choose_default`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from cellkeras.augment.study import (  # noqa: E402
    PUBLISHED,
    TIE,
    choose_default,
    figure,
    summarize,
)

PLAIN_PRESETS = ("none", "basic", "fluid", "intensity", "randaugment", "mix", "gridmask")
FLUID_VARIANTS = ("fluid_half", "fluid_double", "fluid_elastic")
# name -> (real_sets name and cut, or "synthetic")
SETS = {
    "embryo6-end": ("embryo6", "end"),
    "ndev_nuclei": ("ndev_nuclei", "end"),
    "embryo4-middle": ("embryo4", "middle"),
    "laptrack_nuclei": ("laptrack_nuclei", "end"),
    "synthetic": None,
}
# 48 px keeps the auto schedule's stages small (none goes above the images' size); 1,500 images
# is the most that still trains at the auto schedule's floor of 240 steps, with 300 to test.
SYNTHETIC_FLAGS = ("--synthetic_images=1500", "--synthetic_size=48", "--test_fraction=0.2")


def defaults_fingerprint(tag: str) -> str:
    """A hash of the trainer's default configuration (less what each run sets) and `tag`:
    cached runs made under other defaults (schedule, model, learning rate) are not reused.
    Code changes that move results without touching a default need a new `--tag`."""
    from trainer.config import build_config

    config = dataclasses.asdict(build_config())
    config.pop("output_dir", None)
    for field in ("augment", "seed", "deterministic"):
        config["train"].pop(field)
    config["tag"] = tag
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def git_head() -> str:
    """The commit this code is; a snapshot copy (`git archive`) names it in a COMMIT file."""
    if (ROOT / "COMMIT").is_file():
        return (ROOT / "COMMIT").read_text().strip()
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return result.stdout.strip()


def known_presets() -> list[str]:
    from cellkeras.augment.preset_names import AUGMENTATION_PRESETS

    return list(AUGMENTATION_PRESETS)


def data_flags(set_name: str, cache: Path) -> list[str]:
    if SETS[set_name] is None:
        return list(SYNTHETIC_FLAGS)
    import real_sets

    name, cut = SETS[set_name]
    return [f"--data_dir={real_sets.build(name, cut, cache)}"]


def plan(
    sets: list[str],
    presets: list[str],
    variants: list[str],
    variant_sets: list[str],
    seeds: list[int],
) -> list[tuple[str, str, int]]:
    """(set, preset, seed) in run order: seed-major, plain presets before variants."""
    runs = []
    for seed in seeds:
        runs += [(s, p, seed) for s in sets for p in presets]
    for seed in seeds:
        runs += [(s, v, seed) for s in variant_sets for v in variants]
    return runs


def load_cache(path: Path, fingerprint: str) -> dict[tuple[str, str, int], dict]:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["defaults"] == fingerprint:
                done[row["set"], row["preset"], row["seed"]] = row
    return done


def run_one(set_name: str, preset: str, seed: int, out: Path, cache: Path) -> dict:
    # Absolute, as `running_runs` looks for it: a relative --output_dir went unrecognised, so a
    # restarted grid ran an in-flight run again into the same folder and one of the two failed.
    folder = out.resolve() / "runs" / f"{set_name}__{preset}__{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    cmd = [sys.executable, "-m", "trainer.task", *data_flags(set_name, cache)]
    cmd += [f"--augment={preset}", f"--seed={seed}", "--deterministic", f"--output_dir={folder}"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    with (out / "logs").joinpath(f"{folder.name}.log").open("w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log.name}")
    return read_run((set_name, preset, seed), folder, seconds, " ".join(cmd[1:]))


def read_run(key, folder: Path, seconds: float, command: str) -> dict:
    set_name, preset, seed = key
    metrics = json.loads((folder / "metrics.json").read_text())
    row = {
        "set": set_name,
        "preset": preset,
        "seed": seed,
        "test_accuracy": metrics["test_accuracy"],
        "test_accuracy_ci": metrics["test_accuracy_ci"],
        "val_accuracy": metrics["val_accuracy"],
        "seconds": round(seconds, 1),
        "train_seconds": round(sum(s["seconds"] for s in metrics["stages"]), 1),
        "schedule": ",".join(
            f"{'x'.join(map(str, st['size']))}:{st['epochs']}" for st in metrics["stages"]
        ),
        "command": command,
    }
    shutil.rmtree(folder / "logs", ignore_errors=True)  # TensorBoard events: not needed here
    return row


def running_runs(out: Path) -> dict[tuple[str, str, int], tuple[int, float]]:
    """Trainer runs of this grid still in flight from an earlier instance of this script (one
    stopped to change the queue): `{key: (pid, start time)}`, adopted instead of restarted."""
    import psutil

    prefix = f"--output_dir={out.resolve() / 'runs'}/"
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        for arg in proc.info["cmdline"] or ():
            if "trainer.task" in proc.info["cmdline"] and arg.startswith(prefix):
                set_name, preset, seed = arg[len(prefix) :].split("__")
                found[set_name, preset, int(seed)] = (proc.info["pid"], proc.info["create_time"])
    return found


def adopt(key, pid: int, started: float, out: Path) -> dict:
    """Waits for an adopted run to end and reads it as `run_one` would have."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait()
    folder = out / "runs" / "__".join(map(str, key))
    if not (folder / "metrics.json").is_file():
        raise RuntimeError(f"adopted run {folder} ended without metrics.json")
    return read_run(key, folder, time.time() - started, "adopted: see its config.json")


def markdown_table(stats: dict, sets: list[str], presets: list[str]) -> str:
    lines = [
        "| set | preset | seeds | val accuracy (mean) | test accuracy mean ± sd | "
        "mean 95 % CI of a run | vs `none` (same seeds) | s / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for set_name in sets:
        for preset in presets:
            st = stats.get((set_name, preset))
            if st is None:
                continue
            vs = "—"
            sd = "—" if st["n"] < 2 else f"{st['sd']:.3f}"
            if st["vs_none"] is not None:
                vs = f"{st['vs_none']:+.3f} ({st['wins']}/{st['paired']} better)"
            lines.append(
                f"| {set_name} | `{preset}` | {st['n']} | {st['val_mean']:.3f} | "
                f"{st['mean']:.3f} ± {sd} | {st['ci'][0]:.2f}-{st['ci'][1]:.2f} | {vs} | "
                f"{st['seconds']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def choice_text(stats: dict) -> str:
    """The validation-only choice of a default (`cellkeras.augment.study.choose_default`)."""
    choice = choose_default(stats)
    ranked = sorted(choice["scores"].items(), key=lambda item: -item[1][0])
    scores = ", ".join(f"`{p}` {v:.3f}" for p, (v, _) in ranked)
    return (
        f"\nChosen on validation accuracy only (mean over {', '.join(choice['sets'])} of the mean "
        f"over seeds): {scores}. Within {TIE} of the best: {', '.join(choice['tied'])}; "
        f"chosen: **`{choice['preset']}`** (a tie with `none` goes to `none`).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/augment_study"))
    parser.add_argument(
        "--sets", nargs="+", default=["embryo6-end", "ndev_nuclei", "synthetic"], choices=list(SETS)
    )
    parser.add_argument("--presets", nargs="+", default=list(PLAIN_PRESETS))
    parser.add_argument("--variants", nargs="*", default=list(FLUID_VARIANTS))
    parser.add_argument(
        "--variant_sets",
        nargs="*",
        default=["embryo6-end", "ndev_nuclei", "synthetic"],
        choices=list(SETS),
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--real_sets_cache", type=Path, default=Path("runs/real_sets"))
    parser.add_argument("--workers", type=int, default=2, help="runs at the same time")
    parser.add_argument("--tag", default="", help="label of the code state (see fingerprint)")
    parser.add_argument("--report_only", action="store_true", help="table and figure only")
    parser.add_argument("--figure", type=Path, help="figure path (default OUT/augment_study.png)")
    parser.add_argument(
        "--publish", action="store_true", help=f"write the runs to {PUBLISHED.name} for reports"
    )
    parser.add_argument("--machine", default=this_machine(), help="as the report names it")
    args = parser.parse_args()

    known = known_presets()
    presets = [p for p in args.presets if p in known]
    variants = [v for v in args.variants if v in known]
    for missing in sorted(set(args.presets + args.variants) - set(known)):
        print(f"skipping preset {missing!r}: this checkout's trainer does not know it")
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    cache_file = args.out / "runs.jsonl"
    fingerprint = defaults_fingerprint(args.tag)
    done = load_cache(cache_file, fingerprint)
    todo = plan(args.sets, presets, variants, args.variant_sets, args.seeds)
    print(f"defaults {fingerprint}: {len(todo)} runs, {sum(k in done for k in todo)} cached")
    for real in {s for s, _, _ in todo if SETS[s] is not None}:
        data_flags(real, args.real_sets_cache)  # built once, before runs share them
    pending = [] if args.report_only else [k for k in todo if k not in done]
    lock = threading.Lock()
    head = git_head()

    in_flight = running_runs(args.out)
    pending.sort(key=lambda k: k not in in_flight)  # adopted runs first: they are under way

    def work(key):
        try:
            if key in in_flight:
                row = adopt(key, *in_flight[key], args.out)
            else:
                row = run_one(*key, args.out, args.real_sets_cache)
        except RuntimeError as err:  # one failed run should not lose the rest of the grid
            print(f"FAILED {key}: {err}", flush=True)
            return
        row.update(defaults=fingerprint, tag=args.tag, commit=head)
        with lock:
            with cache_file.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            done[key] = row
            print(
                f"[{len(done)}/{len(todo)}] {key}: test {row['test_accuracy']:.3f} "
                f"{row['test_accuracy_ci']} in {row['seconds']:.0f} s",
                flush=True,
            )

    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(work, pending))

    rows = [done[k] for k in todo if k in done]
    if not rows:
        print("no finished runs yet")
        return
    stats = summarize(rows)
    order = presets + variants
    sets = list(dict.fromkeys(args.sets + args.variant_sets))
    table = markdown_table(stats, sets, order) + choice_text(stats)
    schedules = sorted({r["schedule"] for r in rows})
    table += f"\nSchedule: {', '.join(schedules)}; defaults fingerprint {fingerprint}.\n"
    (args.out / "table.md").write_text(table)
    print(table)
    figure(rows, args.figure or args.out / "augment_study.png", presets=order)
    if args.publish:
        publish(rows, args.machine)
        print(f"published {len(rows)} runs to {PUBLISHED}")


def this_machine() -> str:
    """ "2-core Intel(R) Xeon(R) Processor @ 2.80GHz CPU, no GPU": what the runs ran on."""
    cpu = "CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip() + " CPU"
                break
    gpu = "a GPU" if Path("/dev/nvidia0").exists() else "no GPU"
    return f"{os.cpu_count()}-core {cpu}, {gpu}"


def publish(rows: list[dict], machine: str) -> None:
    """Writes the runs the trainer's report draws its study figure from (`PUBLISHED`)."""
    keep = ("set", "preset", "seed", "val_accuracy", "test_accuracy", "test_accuracy_ci")
    runs = [{**{k: row[k] for k in keep}, "seconds": row["seconds"]} for row in rows]
    commits = sorted({row.get("commit", "") for row in rows} - {""})
    study = {"commits": commits, "machine": machine, "runs": runs}
    PUBLISHED.write_text(json.dumps(study, indent=1) + "\n")


if __name__ == "__main__":
    main()
