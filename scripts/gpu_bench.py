"""One prepared command for a short GPU window: what only a GPU shows, in at most ~8 minutes.

Sections (each with its own time budget; one that fails or cannot run is recorded as
"not run: <why>" and the others go on):

  environment     GPU, driver, CUDA/cuDNN of the TensorFlow build, CPU cores, package versions
  fluid           `FluidDistortion` images/s on the GPU (float32 batches already there)
  pipeline        `make_dataset` alone (PNG decode every epoch) with the `fluid` augmentation
                  in tf.data on the host cores (where the trainer runs it) and on the GPU
  albumentations  flip + rotate + GridDistortion on every host core (one process each)
  dali            NVIDIA DALI flip + warp_affine on the GPU, in a child process
  gradcam         `cellkeras.explain.gradcam` batched vs one image per call
  serving         `export_model` + `serving_default`: one batch of 32 vs 32 single calls
  training        images/s of the trainer's step (`joint_trainer`, Adam) for parallel_small
                  and parallel_large at 128 and 224 px, float32 / mixed_float16 /
                  mixed_bfloat16, XLA on and off; compile time reported apart. Last, with
                  all the time the others left; the summary sets the pipeline against it.

Writes `OUT/gpu_bench.json` (every number, rewritten after each section, so a killed run
keeps what it measured) and `OUT/gpu_bench.md` (the table for docs/BENCHMARKS.md, also printed
at the end), and prints progress as it goes.

On the GPU machine, with the repo's pinned stack and TensorFlow's CUDA 12 libraries in the
Python that runs this (the script puts the repo root on the path, so installing the
dependencies is enough; docs/BENCHMARKS.md "## GPU" lists them for Pythons other than 3.11):

    pip install -e . 'tensorflow[and-cuda]==2.21.0'
    pip install --no-deps albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.3 \
        pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
        stringzilla==5.3.2 simsimd==6.5.16          # optional: the host-core peer
    pip install nvidia-dali-cuda120                  # optional: DALI's warp
    PYTHONUNBUFFERED=1 python scripts/gpu_bench.py --out $OUT

On CPU, the same code paths on tiny shapes (the test suite runs this):

    python scripts/gpu_bench.py --dry_run --out /tmp/gpu_bench
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import _gpu_bench_host as host  # noqa: E402
import _gpu_bench_report as report  # noqa: E402
from _gpu_bench_host import Budget, error_result, log, not_run  # noqa: E402

# Section, its share of the time budget, and whether it needs TensorFlow. What a section leaves
# unused goes to the later ones; training, last, gets all that is left.
SECTIONS = [
    ("environment", 0.0, False),
    ("fluid", 0.07, True),
    ("pipeline", 0.10, True),
    ("albumentations", 0.06, False),
    ("dali", 0.07, False),
    ("gradcam", 0.07, True),
    ("serving", 0.13, True),
    ("training", 0.50, True),
]
PACKAGES = [
    "tensorflow", "keras", "keras-cv", "numpy", "opencv-python-headless", "albumentations",
    "nvidia-dali-cuda120", "nvidia-dali-cuda130",
]  # fmt: skip


@dataclasses.dataclass
class Plan:
    """What every section measures; `full_plan` for the GPU, `dry_plan` for the CPU test."""

    dry_run: bool
    training_configs: list[tuple[str, int, str, bool]]
    batch_size: int = 128
    seconds: float = 1.5  # timed seconds per measurement, all repeats together
    min_config_s: float = 8.0  # a training configuration is not started with less left
    fluid_sizes: list[int] = dataclasses.field(default_factory=lambda: [128, 224])
    fluid_batch: int = 256
    pipeline_size: int = 128
    pipeline_images: int = 1024
    albu_sizes: list[int] = dataclasses.field(default_factory=lambda: [128, 224])
    albu_seconds: float = 3.0
    albu_workers: int = os.cpu_count() or 1
    small_size: int = 128  # Grad-CAM and serving
    gradcam_images: int = 64
    gradcam_batches: list[int] = dataclasses.field(default_factory=lambda: [1, 64])
    serving_batch: int = 32


def training_matrix(models: list[str], sizes: list[int]) -> list[tuple[str, int, str, bool]]:
    """Every size x model x precision x XLA, in the order the budget should spend them: the
    small model and size first, XLA on (Keras' choice on a GPU) before off."""
    precisions = ["float32", "mixed_float16", "mixed_bfloat16"]
    return [
        (model, size, precision, xla)
        for size in sizes
        for model in models
        for xla in (True, False)
        for precision in precisions
    ]


def full_plan(args: argparse.Namespace) -> Plan:
    return Plan(
        dry_run=False,
        training_configs=training_matrix(args.models, args.sizes),
        batch_size=args.batch_size,
        seconds=args.seconds,
    )


def dry_plan(args: argparse.Namespace) -> Plan:
    """Tiny shapes on CPU: every code path once. Each precision, XLA on and off and both models
    appear, not their cross product: tracing one training step takes ~7 s on a 2-core CPU,
    XLA ~12 s more."""
    small, large = args.models[0], args.models[-1]
    return Plan(
        dry_run=True,
        training_configs=[
            (small, 16, "float32", True),
            (small, 16, "mixed_bfloat16", False),
            (large, 16, "mixed_float16", False),
        ],
        batch_size=8,
        seconds=0.2,
        min_config_s=0.0,
        fluid_sizes=[16],
        fluid_batch=8,
        pipeline_size=16,
        pipeline_images=32,
        albu_sizes=[16],
        albu_seconds=0.5,
        albu_workers=2,
        small_size=16,
        gradcam_images=8,
        gradcam_batches=[1, 8],
        serving_batch=4,
    )


def init_tensorflow(dry_run: bool) -> tuple[object | None, str | None]:
    """Imports TensorFlow (and what the sections need) and sets GPU memory growth, so that
    DALI and the next section find memory; on a dry run hides every GPU. Returns (tf, None)
    or (None, why not)."""
    try:
        import tensorflow as tf

        if dry_run:
            tf.config.set_visible_devices([], "GPU")
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except (RuntimeError, ValueError) as err:  # best effort: DALI may then find less
                log(f"memory growth not set on {gpu.name}: {err}")
        import cellkeras.augment  # noqa: F401  (keras, keras-cv)
        import cellkeras.models  # noqa: F401
    except Exception as err:
        return None, (
            f"TensorFlow stack not importable ({type(err).__name__}: {str(err)[:200]}); this "
            "needs the repo's stack: pip install 'tensorflow[and-cuda]==2.21.0' keras==3.15.1 "
            "keras-cv==0.9.0 tf-keras-vis==0.8.7 opencv-python-headless"
        )
    return tf, None


def _nvidia_smi() -> list[str]:
    query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm"
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=15,
        )  # fmt: skip
        return [line.strip() for line in done.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def environment(tf, tf_reason: str | None) -> dict:
    env: dict = {
        "status": "ok",
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_cores": os.cpu_count(),
        "nvidia_smi": _nvidia_smi(),
        "packages": {},
    }
    for name in PACKAGES:
        try:
            env["packages"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env["packages"][name] = None
    gpus = []
    if tf is None:
        env["tensorflow"] = tf_reason
    else:
        build = tf.sysconfig.get_build_info()
        env["tf_build"] = {
            k: build.get(k) for k in ("cuda_version", "cudnn_version", "is_cuda_build")
        }
        for gpu in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(gpu)
            gpus.append(
                {
                    "name": details.get("device_name"),
                    "compute_capability": details.get("compute_capability"),
                }
            )
    env["tf_gpus"] = gpus
    smi = env["nvidia_smi"][0] if env["nvidia_smi"] else None
    env["gpu_name"] = smi.split(",")[0].strip() if smi else (gpus[0]["name"] if gpus else None)
    gpu = smi or (f"{gpus[0]['name']} (compute {gpus[0]['compute_capability']})" if gpus else None)
    versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v and k in PACKAGES[:3])
    env["machine"] = (
        f"{gpu or ('no GPU seen by TensorFlow' if tf else 'GPU not checked')}; "
        f"{env['cpu_cores']} CPU cores; "
        f"Python {env['python']}; {versions or 'TensorFlow not installed'}"
    )
    return env


def run_section(name: str, plan: Plan, budget: Budget, tf, tf_reason, write) -> dict:
    """Calls the section; its own errors become its result."""
    import _gpu_bench_sections as tf_sections

    if name == "environment":
        return environment(tf, tf_reason)
    if name == "albumentations":
        return host.albumentations_section(
            plan.albu_sizes, plan.albu_seconds, plan.albu_workers, budget
        )
    if name == "dali":
        args = {"dry_run": plan.dry_run, "sizes": plan.fluid_sizes, "batch": plan.fluid_batch,
                "seconds": plan.seconds, "budget_s": budget.left()}  # fmt: skip
        return host.dali_section(args, budget)
    if name == "training":
        return tf_sections.training(plan, budget, on_row=write)
    functions = {
        "fluid": tf_sections.fluid,
        "pipeline": tf_sections.pipeline,
        "gradcam": tf_sections.gradcam_section,
        "serving": tf_sections.serving,
    }
    return functions[name](plan, budget)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_bench_out", help="folder for the JSON and markdown")
    parser.add_argument("--dry_run", action="store_true", help="tiny shapes on CPU (GPUs hidden)")
    parser.add_argument(
        "--budget_s",
        type=float,
        default=None,
        help="whole run, s (default 420; dry run 1200: it never cuts)",
    )
    parser.add_argument("--sections", default="all", help="comma-separated subset, default all")
    parser.add_argument("--models", nargs="+", default=["parallel_small", "parallel_large"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per measurement")
    parser.add_argument("--allow_cpu", action="store_true", help="full shapes even without a GPU")
    args = parser.parse_args(argv)
    names = [s for s, _, _ in SECTIONS]
    args.selected = names if args.sections == "all" else args.sections.split(",")
    unknown = sorted(set(args.selected) - set(names))
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(names)}")
    if args.budget_s is None:
        args.budget_s = 1200.0 if args.dry_run else 420.0
    return args


def _gate(name: str, needs_tf: bool, args, tf, tf_reason: str | None) -> str | None:
    """Why a section cannot run here, or None."""
    if name not in args.selected and name != "environment":
        return "not selected (--sections)"
    if needs_tf and tf is None:
        return tf_reason
    if (
        needs_tf
        and not args.dry_run
        and not args.allow_cpu
        and not tf.config.list_logical_devices("GPU")
    ):
        return "no GPU visible to TensorFlow (full shapes on CPU would take hours; use --dry_run, or --allow_cpu)"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    plan = dry_plan(args) if args.dry_run else full_plan(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpu_or_dry = "dry run: tiny shapes on CPU" if args.dry_run else "GPU"
    results: dict = {
        "meta": {
            "title": "Dry run (CPU, tiny shapes: checks the code, not the numbers)"
            if args.dry_run
            else "GPU",
            "command": shlex.join(
                ["python", "scripts/gpu_bench.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "mode": gpu_or_dry,
            "date": datetime.date.today().isoformat(),
            "budget_s": args.budget_s,
            "plan": dataclasses.asdict(plan),
        },
        "sections": {},
    }

    def write(partial: dict | None = None, name: str = "training") -> None:
        """Rewrites both files; a fault in the report never costs the JSON or the run."""
        if partial is not None:
            results["sections"][name] = partial
        results["meta"]["wall_s"] = time.perf_counter() - started
        try:
            results["summary"] = report.summary(results)
            text = report.markdown(results)
        except Exception as err:
            results["meta"]["report_error"] = error_result(err)
            text = f"report failed: {results['meta']['report_error']['reason']}\n"
        (out / "gpu_bench.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (out / "gpu_bench.md").write_text(text)

    log(f"gpu_bench: {gpu_or_dry}, budget {args.budget_s:.0f} s, writing {out}/")
    if any(needs_tf and name in args.selected for name, _, needs_tf in SECTIONS):
        tf, tf_reason = init_tensorflow(args.dry_run)
    else:
        tf, tf_reason = None, "not imported: no selected section needs it"
    log(f"TensorFlow: {tf.__version__ if tf else tf_reason}")
    for index, (name, share, needs_tf) in enumerate(SECTIONS):
        left = args.budget_s - (time.perf_counter() - started)
        shares = sum(s for n, s, _ in SECTIONS[index:] if n in args.selected) or 1.0
        budget = Budget(max(left * share / shares, 10.0) if share else 30.0)
        reason = _gate(name, needs_tf, args, tf, tf_reason)
        section_start = time.perf_counter()
        log(f"[{name}] " + (f"not run: {reason}" if reason else f"budget {budget.seconds:.0f} s"))
        try:
            result = (
                not_run(reason) if reason else run_section(name, plan, budget, tf, tf_reason, write)
            )
        except Exception as err:  # a section's failure is its result, never the run's
            result = error_result(err)
        result["seconds"] = time.perf_counter() - section_start
        result["budget_s"] = budget.seconds
        write(result, name)
        log(f"[{name}] {result['status']} in {result['seconds']:.1f} s" + (
            f": {result['reason']}" if result.get("reason") and not reason else ""))  # fmt: skip
    write()
    log(
        f"\ndone in {results['meta']['wall_s']:.0f} s: {out / 'gpu_bench.json'}, {out / 'gpu_bench.md'}\n"
    )
    print((out / "gpu_bench.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
