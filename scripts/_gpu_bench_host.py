"""Timing helpers of scripts/gpu_bench.py and its sections that run without TensorFlow.

Nothing here imports TensorFlow: the albumentations workers (spawned processes) and the DALI
child process import this module alone.

Every section returns a JSON-ready dict with a "status": "ok", "partial" (some rows not run),
"not run" (with "reason") or "error" (with "reason" and "traceback").
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULT_TAG = "GPU_BENCH_RESULT "  # the DALI child's last line: this tag, then its JSON


class Budget:
    """Seconds a section may spend; loops ask `left()` before starting the next item."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def log(message: str) -> None:
    print(message, flush=True)


def not_run(reason: str, **extra: Any) -> dict[str, Any]:
    return {"status": "not run", "reason": reason, **extra}


def error_result(err: BaseException) -> dict[str, Any]:
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    reason = f"{type(err).__name__}: {err}".strip().splitlines()
    return {
        "status": "error",
        "reason": (reason[0] if reason else type(err).__name__)[:300],
        "traceback": "".join(lines)[-4000:],
    }


def measure(
    run: Callable[[int], None],
    images_per_unit: int,
    seconds: float,
    budget: Budget | None = None,
    warmup: int = 2,
    repeats: int = 3,
) -> dict[str, Any]:
    """Images per second of `run(n)`, which does n units of work and returns only once the
    device has finished them (it fetches a result to the host).

    The first unit (tracing, XLA compilation, cuDNN autotuning) is timed alone as
    `compile_s`; `warmup` more units and a two-unit calibration are discarded too. Then
    `repeats` timed runs of as many units as fill `seconds` together (less when the budget is
    short); the rate is their median, with the spread as `min`/`max`.
    """
    start = time.perf_counter()
    run(1)
    compile_s = time.perf_counter() - start
    if warmup:
        run(warmup)
    start = time.perf_counter()
    run(2)
    unit_s = max((time.perf_counter() - start) / 2, 1e-7)
    if budget is not None:
        seconds = max(min(seconds, 0.6 * budget.left()), 3 * unit_s)
    units = int(max(1, min(100_000, round(seconds / repeats / unit_s))))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(units)
        rates.append(units * images_per_unit / (time.perf_counter() - start))
    return {
        "images_per_s": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "compile_s": compile_s,
        "unit_ms": 1000.0 * images_per_unit / statistics.median(rates),
        "units_per_repeat": units,
        "repeats": repeats,
    }


def _synthetic_uint8(n: int, size: int, seed: int):
    """scripts/bench_augment.py's smooth blob images, as uint8 RGB."""
    import numpy as np
    from bench_augment import _images

    return (_images(n, size, seed) * 255).round().astype(np.uint8)


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


# -- albumentations on the host's cores -------------------------------------------------------


def _albu_chain():
    import albumentations as A
    import cv2

    cv2.setNumThreads(1)
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Rotate(limit=15, border_mode=cv2.BORDER_REFLECT_101, p=1.0),
            A.GridDistortion(num_steps=4, distort_limit=0.3, p=1.0),
        ]
    )


def albu_warm(_: int) -> int:
    """Imports albumentations in a pool worker before the timed window."""
    _albu_chain()
    return os.getpid()


def albu_window(job: tuple[int, float, float, int]) -> int:
    """One worker: augment images one at a time during [start_at, end_at] (wall clock, shared by
    every worker); returns how many it finished inside the window."""
    size, start_at, end_at, seed = job
    chain = _albu_chain()
    images = list(_synthetic_uint8(16, size, seed))
    while time.time() < start_at:
        time.sleep(0.001)
    done = 0
    while time.time() < end_at:
        chain(image=images[done % len(images)])
        done += 1
    return done


def albumentations_section(sizes: list[int], seconds: float, workers: int, budget: Budget) -> dict:
    """albumentations flip + rotate + GridDistortion (the chain matching the `fluid` preset's
    geometry, as in scripts/bench_augment.py) on uint8 images, one process per host core, all
    timed in one shared wall-clock window."""
    import importlib.util
    import multiprocessing

    if importlib.util.find_spec("albumentations") is None:
        return not_run(
            "albumentations is not installed (pip install --no-deps albumentations==2.0.8 "
            "albucore==0.0.24 pydantic pydantic-core annotated-types typing-inspection "
            "stringzilla simsimd)"
        )
    rows = []
    pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        pool.map_async(albu_warm, range(workers), chunksize=1).get(timeout=max(budget.left(), 5))
        for size in sizes:
            if budget.left() < seconds + 3:
                rows.append({"size": size, **not_run("section time budget spent")})
                continue
            start_at = time.time() + 1.0
            jobs = [(size, start_at, start_at + seconds, i) for i in range(workers)]
            counts = pool.map_async(albu_window, jobs, chunksize=1).get(timeout=seconds + 30)
            rows.append(
                {
                    "status": "ok",
                    "size": size,
                    "images_per_s": sum(counts) / seconds,
                    "per_worker_images_per_s": sum(counts) / seconds / workers,
                }
            )
            log(
                f"  albumentations {size} px, {workers} processes: {rows[-1]['images_per_s']:,.0f} img/s"
            )
    finally:
        pool.terminate()
    return {
        "status": "ok" if all(r["status"] == "ok" for r in rows) else "partial",
        "version": _version("albumentations"),
        "workers": workers,
        "method": "flip h/v + Rotate(15, reflect) + GridDistortion(4, 0.3), uint8, 1 thread each",
        "rows": rows,
    }


# -- NVIDIA DALI, in a child process ----------------------------------------------------------


class _Cycle:
    """DALI's external source: the input batches in turn (DALI wants a callable of no
    arguments, so not a function with defaults)."""

    def __init__(self, batches: list):
        self.batches, self.calls = batches, 0

    def __call__(self) -> list:
        self.calls += 1
        return self.batches[self.calls % len(self.batches)]


def dali_section(args: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """Runs `dali_child` in a fresh Python (DALI brings its own CUDA libraries; a crash or hang
    there must not take the whole benchmark down) and returns what it reports."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "import _gpu_bench_host as h; h.dali_child(sys.argv[1])"
    )
    timeout = max(budget.left(), 10.0)
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return not_run(f"the DALI child ran past its {timeout:.0f} s budget and was killed")
    lines = done.stdout.splitlines()
    for line in lines:
        if not line.startswith(RESULT_TAG):
            log(line)
    for line in reversed(lines):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"status": "error", "reason": f"DALI child exited {done.returncode}: {' | '.join(tail)}"}


def dali_child(raw: str) -> None:
    """The child's body: prints RESULT_TAG + JSON as its last line, whatever happens."""
    args = json.loads(raw)
    try:
        result = _dali_rates(args)
    except Exception as err:  # reported to the parent, which records it
        result = error_result(err)
    print(RESULT_TAG + json.dumps(result), flush=True)


def _dali_rates(args: dict[str, Any]) -> dict[str, Any]:
    """flip + rotation warp on the GPU; on a dry run the same pipeline on the CPU backend."""
    try:
        import nvidia.dali as dali
        from nvidia.dali import fn, pipeline_def
    except ImportError as err:
        return not_run(
            f"nvidia-dali is not installed ({err}; pip install nvidia-dali-cuda120, or "
            "nvidia-dali-cuda130 for a CUDA 13 driver stack)"
        )
    device = "cpu" if args["dry_run"] else "gpu"
    budget = Budget(args["budget_s"])
    rows = []
    for size in args["sizes"]:
        batch = args["batch"]
        if budget.left() < 5:
            rows.append({"size": size, "batch": batch, **not_run("section time budget spent")})
            continue
        source = _Cycle([list(_synthetic_uint8(batch, size, seed)) for seed in range(2)])

        @pipeline_def(
            batch_size=batch,
            num_threads=min(4, os.cpu_count() or 1),
            device_id=None if device == "cpu" else 0,
            prefetch_queue_depth=2,
        )
        def pipe(size=size, source=source):
            images = fn.external_source(source=source, batch=True, device=device, layout="HWC")
            images = fn.flip(
                images, horizontal=fn.random.coin_flip(), vertical=fn.random.coin_flip()
            )
            angle = fn.random.uniform(range=(-15.0, 15.0))
            matrix = fn.transforms.rotation(angle=angle, center=(size / 2, size / 2))
            return fn.warp_affine(images, matrix=matrix, fill_value=0, inverse_map=False)

        p = pipe()
        p.build()

        def run(n: int, p=p) -> None:
            for _ in range(n):
                out = p.run()
            if hasattr(out[0], "as_cpu"):
                out[0].as_cpu()  # waits for the last GPU batch

        timed = measure(run, batch, args["seconds"], budget)
        rows.append({"status": "ok", "size": size, "batch": batch, **timed})
        log(f"  DALI {size} px on {device}: {timed['images_per_s']:,.0f} img/s")
        del p
    return {
        "status": "ok" if all(r["status"] == "ok" for r in rows) else "partial",
        "version": dali.__version__,
        "device": device,
        "method": "fn.flip (random h/v) + fn.warp_affine (rotation U(-15, 15) deg), uint8 HWC "
        f"from host numpy (external_source, device='{device}'); DALI has no mesh distortion",
        "rows": rows,
    }
