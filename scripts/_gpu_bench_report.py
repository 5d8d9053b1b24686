"""The summary (goals, suggested defaults) and the markdown of scripts/gpu_bench.py's results.

Pure functions of the results dict, so a saved gpu_bench.json can be rendered again:
`python -c "import json, _gpu_bench_report as r; print(r.markdown(json.load(open(P))))"`.
"""

from __future__ import annotations

import math
from typing import Any

MIXED = ("mixed_float16", "mixed_bfloat16")
FLUID_GOAL = 50_000  # images/s at 128 px, the goal
MIXED_GOAL = 2.0  # mixed precision over float32 images/s


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok"]


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _rows(results: dict, section: str) -> list[dict]:
    return results.get("sections", {}).get(section, {}).get("rows", [])


def _train_rate(rows: list[dict], model: str, size: int, precision: str, xla: bool) -> float | None:
    for r in _ok(rows):
        if (r["model"], r["size"], r["precision"], r["xla"]) == (model, size, precision, xla):
            return r["images_per_s"]
    return None


def speedups(rows: list[dict]) -> dict[str, list[float]]:
    """Each mixed policy over float32 (same model, size, XLA), and XLA on over off (same
    model, size, precision), for every pair where both were measured."""
    out: dict[str, list[float]] = {p: [] for p in MIXED}
    out["xla"] = []
    for r in _ok(rows):
        m, s, p, x = r["model"], r["size"], r["precision"], r["xla"]
        base = _train_rate(rows, m, s, "float32", x)
        if p in MIXED and base:
            out[p].append(r["images_per_s"] / base)
        off = _train_rate(rows, m, s, p, False)
        if x and off:
            out["xla"].append(r["images_per_s"] / off)
    return out


def summary(results: dict) -> dict[str, Any]:
    """Goals met or not, and what `--mixed_precision=auto` / `--jit_compile=auto` should pick."""
    train = _rows(results, "training")
    ratio = speedups(train)
    means = {k: _geomean(v) for k, v in ratio.items()}
    mixed = [p for p in MIXED if means[p]]
    best = max(mixed, key=lambda p: means[p]) if mixed else None
    out: dict[str, Any] = {"speedup_geomean": means, "speedups": ratio, "best_mixed": best}
    out["suggest_mixed_precision"] = (
        None if best is None else best if means[best] > 1.1 else "float32"
    )
    out["suggest_jit_compile"] = (
        None if not means["xla"] else "on" if means["xla"] > 1.05 else "off"
    )
    out["goal_mixed"] = None if best is None else min(ratio[best]) >= MIXED_GOAL
    fluid128 = [r["images_per_s"] for r in _ok(_rows(results, "fluid")) if r["size"] == 128]
    out["fluid_128_best"] = max(fluid128) if fluid128 else None
    out["goal_fluid"] = None if not fluid128 else max(fluid128) >= FLUID_GOAL
    albu128 = [r["images_per_s"] for r in _ok(_rows(results, "albumentations")) if r["size"] == 128]
    out["fluid_over_albumentations_128"] = (
        max(fluid128) / albu128[0] if fluid128 and albu128 else None
    )
    out["input_bound"] = _input_bound(results, train)
    verdicts = [v["input_bound"] for v in out["input_bound"]]
    out["goal_input"] = None if not verdicts else not any(verdicts)
    return out


def _input_bound(results: dict, train: list[dict]) -> list[dict]:
    """The trainer's own pipeline (augment in tf.data) against the fastest step of each model
    at the pipeline's size."""
    section = results.get("sections", {}).get("pipeline", {})
    trainer_row = next(
        (r for r in _ok(section.get("rows", [])) if "trainer" in r["pipeline"]), None
    )
    if trainer_row is None:
        return []
    out = []
    for model in dict.fromkeys(r["model"] for r in _ok(train)):
        steps = [r for r in _ok(train) if r["model"] == model and r["size"] == section["size"]]
        if steps:
            fastest = max(steps, key=lambda r: r["images_per_s"])
            out.append(
                {
                    "model": model,
                    "step_images_per_s": fastest["images_per_s"],
                    "step": f"{fastest['precision']}, XLA {'on' if fastest['xla'] else 'off'}",
                    "pipeline_images_per_s": trainer_row["images_per_s"],
                    "input_bound": trainer_row["images_per_s"] < fastest["images_per_s"],
                }
            )
    return out


# -- markdown ---------------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _cell(value: Any) -> str:
    return str(value).replace("|", "/").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _why(row: dict) -> str:
    if not row:
        return "not run: not reached (the run stopped before this section)"
    return f"{row.get('status')}: {row.get('reason', '')}".strip()


def _rate_cells(r: dict) -> list[str]:
    if r.get("status") != "ok":
        return [_why(r), "", ""]
    return [_n(r["images_per_s"]), f"{_n(r['min'])}-{_n(r['max'])}", f"{r['compile_s']:.1f}"]


def _training_md(section: dict) -> str:
    rows = section["rows"]
    body = []
    for r in rows:
        base = _train_rate(rows, r["model"], r["size"], "float32", r["xla"])
        vs = r["images_per_s"] / base if r.get("status") == "ok" and base else None
        body.append(
            [
                r["model"],
                r["size"],
                r["precision"],
                "on" if r["xla"] else "off",
                *_rate_cells(r),
                "" if vs is None else f"{vs:.2f}x",
            ]  # fmt: skip
        )
    notes = {
        r["model"]: r["step"]
        for r in _ok(rows)
        if r.get("step", "joint_trainer") != "joint_trainer"
    }
    note = "".join(f"\n\nStep of {m}: {step}." for m, step in notes.items())
    return (
        f"Batch {section['batch_size']}; `joint_trainer` step (Adam, auxiliary branch losses) "
        "through `fit` on one cached random batch copied from host memory each step.\n\n"
        + _table(
            ["model", "px", "precision", "XLA", "images/s", "spread", "compile s", "vs float32"],
            body,
        )
        + note
    )


def _simple_md(section: dict, key: str, extra: list[str]) -> str:
    header = [key, *extra, "images/s", "spread", "compile s"]
    body = [[r.get(key), *(r.get(e, "") for e in extra), *_rate_cells(r)] for r in section["rows"]]
    return _table(header, body)


def _fluid_md(results: dict) -> str:
    sections = results["sections"]
    parts = []
    fl = sections.get("fluid", {})
    if fl.get("rows"):
        parts.append(f"cellkeras `FluidDistortion` on {fl['device']}, float32, in a tf.function:")
        parts.append(_simple_md(fl, "layer", ["size", "batch"]))
    else:
        parts.append(f"cellkeras: {_why(fl)}")
    al = sections.get("albumentations", {})
    if al.get("rows"):
        body = [[r["size"], _n(r.get("images_per_s")) if r["status"] == "ok" else _why(r)]
                for r in al["rows"]]  # fmt: skip
        parts.append(
            f"albumentations {al['version']}, {al['method']}, {al['workers']} host processes:\n\n"
            + _table(["px", "images/s"], body)
        )
    else:
        parts.append(f"albumentations: {_why(al)}")
    da = sections.get("dali", {})
    if da.get("rows"):
        parts.append(f"NVIDIA DALI {da['version']}, {da['method']}:")
        parts.append(_simple_md(da, "size", ["batch"]))
    else:
        parts.append(f"DALI: {_why(da)}")
    return "\n\n".join(parts)


def _goals_md(s: dict) -> str:
    def met(v):
        return "not measured" if v is None else "yes" if v else "**no**"

    best = s["best_mixed"]
    mixed = s["speedups"].get(best, []) if best else []
    bound = "; ".join(
        f"{b['model']}: pipeline {_n(b['pipeline_images_per_s'])} vs step "
        f"{_n(b['step_images_per_s'])} ({b['step']})" for b in s["input_bound"]
    )  # fmt: skip
    rows = [
        [f"mixed precision >= {MIXED_GOAL:.0f}x float32 images/s",
         f"{best}: {min(mixed):.2f}x-{max(mixed):.2f}x" if mixed else "n/a", met(s["goal_mixed"])],
        ["input pipeline never the bottleneck", bound or "n/a", met(s["goal_input"])],
        [f"FluidDistortion >= {FLUID_GOAL:,} img/s at 128 px", _n(s["fluid_128_best"])
         + (f" ({_x(s['fluid_over_albumentations_128'])} albumentations on every host core)"
            if s["fluid_over_albumentations_128"] else ""),
         met(s["goal_fluid"])],
    ]  # fmt: skip
    means = s["speedup_geomean"]
    suggest = (
        f"Suggested: `--mixed_precision=auto` -> {s['suggest_mixed_precision'] or 'n/a'} "
        f"(geometric-mean speedup over float32: "
        + ", ".join(f"{p} {_x(means[p])}" for p in MIXED)
        + f"); `--jit_compile=auto` -> {s['suggest_jit_compile'] or 'n/a'} "
        f"(XLA on over off: {_x(means['xla'])})."
    )
    return _table(["goal", "measured", "met"], rows) + "\n\n" + suggest


def markdown(results: dict) -> str:
    """The section that goes into docs/BENCHMARKS.md."""
    meta, sections = results["meta"], results["sections"]
    env = sections.get("environment", {})
    lines = [
        f"### {meta['title']}" + (f": {env['gpu_name']}" if env.get("gpu_name") else ""),
        "",
        f"Machine: {env.get('machine', 'unknown')}. Command: `{meta['command']}` "
        f"({meta['mode']}, {meta['wall_s']:.0f} s, {meta['date']}).",
    ]
    blocks = [
        ("Training images/s", "training", _training_md),
        ("Input pipeline (images/s)", "pipeline", lambda s: _simple_md(s, "pipeline", [])),
        ("Augmentation images/s", None, lambda _: _fluid_md(results)),
        ("Grad-CAM images/s", "gradcam", lambda s: _simple_md(s, "batch", [])),
        ("Serving images/s", "serving", lambda s: _simple_md(s, "call", [])),
    ]
    for title, key, render in blocks:
        section = sections.get(key, {}) if key else {"rows": True}
        lines += ["", f"#### {title}", ""]
        lines.append(render(section) if section.get("rows") else _why(section))
    lines += ["", "#### Goals", "", _goals_md(results["summary"])]
    return "\n".join(lines) + "\n"
