"""scripts/gpu_bench.py: the CPU dry run of every section, and the report's rules."""

import importlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SECTIONS = [
    "environment",
    "fluid",
    "pipeline",
    "albumentations",
    "dali",
    "gradcam",
    "serving",
    "training",
]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return importlib.import_module("gpu_bench")


def _has(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _rated(rows):
    return [r for r in rows if r["status"] == "ok" and r["images_per_s"] > 0]


@pytest.mark.slow
def test_dry_run_measures_every_section(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS.parent), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu_bench.py"), "--dry_run", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_bench.json").read_text())
    sections = results["sections"]
    assert list(sections) == SECTIONS
    assert "report_error" not in results["meta"]
    for name in ("fluid", "training", "pipeline", "gradcam", "serving"):
        assert sections[name]["status"] == "ok", (name, sections[name])
        assert _rated(sections[name]["rows"]) == sections[name]["rows"], name
    rows = sections["training"]["rows"]
    assert {r["model"] for r in rows} == {"parallel_small", "parallel_large"}
    assert {r["precision"] for r in rows} == {"float32", "mixed_float16", "mixed_bfloat16"}
    assert {r["xla"] for r in rows} == {True, False}
    assert all(r["compile_s"] > 0 for r in rows)
    for name, module in (("albumentations", "albumentations"), ("dali", "nvidia.dali")):
        if _has(module):
            assert _rated(sections[name]["rows"]), name
        else:  # not installed here: said so, with what to install
            assert sections[name]["status"] == "not run", sections[name]
            assert "pip install" in sections[name]["reason"]
    assert sections["environment"]["cpu_cores"] >= 1
    assert set(results["summary"]) >= {"goal_mixed", "goal_fluid", "goal_input"}
    table = (tmp_path / "gpu_bench.md").read_text()
    assert table.startswith("### Dry run")
    for title in ("Training", "Input pipeline", "Augmentation", "Grad-CAM", "Serving", "Goals"):
        assert f"#### {title}" in table
    assert "| parallel_large | 16 | mixed_float16 | off |" in table
    assert table in done.stdout  # printed at the end too


def test_a_failing_section_is_recorded_and_the_run_goes_on(bench, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(bench.host, "albumentations_section", broken)
    assert bench.main(["--sections", "albumentations,dali", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_bench.json").read_text())
    sections = results["sections"]
    assert sections["albumentations"]["status"] == "error"
    assert "planted failure" in sections["albumentations"]["reason"]
    assert sections["dali"]["status"] in ("ok", "not run", "error")
    assert sections["training"] == {
        **sections["training"],
        "status": "not run",
        "reason": "not selected (--sections)",
    }
    table = (tmp_path / "gpu_bench.md").read_text()
    assert "albumentations: error: RuntimeError: planted failure" in table
    assert "#### Training images/s\n\nnot run: not selected (--sections)" in table


def test_full_shapes_refuse_a_machine_without_gpu(bench):
    args = bench.parse_args(["--out", "x"])
    no_gpu = types.SimpleNamespace(config=types.SimpleNamespace(list_logical_devices=lambda _: []))
    assert "no GPU visible" in bench._gate("training", True, args, no_gpu, None)
    assert bench._gate("albumentations", False, args, no_gpu, None) is None
    assert bench._gate("training", True, args, None, "no TensorFlow") == "no TensorFlow"
    dry = bench.parse_args(["--dry_run"])
    assert bench._gate("training", True, dry, no_gpu, None) is None
    assert dry.budget_s == 1200 and args.budget_s == 420
    with pytest.raises(SystemExit):
        bench.parse_args(["--sections", "training,warp"])


def test_training_matrix_covers_the_issue(bench):
    configs = bench.training_matrix(["parallel_small", "parallel_large"], [128, 224])
    assert len(configs) == 2 * 2 * 3 * 2 == len(set(configs))
    assert configs[0] == ("parallel_small", 128, "float32", True)
    assert configs[-1] == ("parallel_large", 224, "mixed_bfloat16", False)


def _row(model, size, precision, xla, rate):
    return {"status": "ok", "model": model, "size": size, "precision": precision, "xla": xla,
            "images_per_s": rate, "min": rate, "max": rate, "compile_s": 1.0}  # fmt: skip


def test_summary_sets_goals_and_suggests_defaults(bench):
    report = bench.report
    training = [
        _row("parallel_small", 128, "float32", False, 1000),
        _row("parallel_small", 128, "float32", True, 1500),
        _row("parallel_small", 128, "mixed_float16", True, 3300),
        _row("parallel_small", 128, "mixed_bfloat16", True, 3000),
        {"model": "parallel_small", "size": 128, "precision": "mixed_float16", "xla": False,
         "status": "not run", "reason": "section time budget spent"},
    ]  # fmt: skip
    pipeline = {"size": 128, "batch": 128, "rows": [
        {"pipeline": "decode + `fluid` augment in tf.data (host cores, where the trainer runs it)",
         "status": "ok", "images_per_s": 2000.0, "min": 1, "max": 1, "compile_s": 0.1}]}  # fmt: skip
    fluid = {"device": "/GPU:0", "rows": [{"layer": "x", "size": 128, "batch": 256, "status": "ok",
             "images_per_s": 60_000.0, "min": 1, "max": 1, "compile_s": 2.0}]}  # fmt: skip
    results = {
        "meta": {"title": "GPU", "command": "c", "mode": "GPU", "date": "d", "wall_s": 1.0},
        "sections": {
            "environment": {"status": "ok", "machine": "m", "gpu_name": "NVIDIA H200"},
            "training": {"status": "partial", "batch_size": 128, "rows": training},
            "pipeline": pipeline,
            "fluid": fluid,
            "dali": {"status": "not run", "reason": "nvidia-dali is not installed"},
        },
    }
    summary = report.summary(results)
    assert summary["suggest_mixed_precision"] == "mixed_float16"
    assert summary["suggest_jit_compile"] == "on"
    assert summary["goal_mixed"] is True  # 3300 / 1500 = 2.2x with XLA on
    assert summary["goal_fluid"] is True
    assert summary["goal_input"] is False  # 2,000 img/s in, 3,300 img/s trained
    results["summary"] = summary
    table = report.markdown(results)
    assert table.startswith("### GPU: NVIDIA H200")
    assert (
        "| parallel_small | 128 | mixed_float16 | on | 3,300 | 3,300-3,300 | 1.0 | 2.20x |" in table
    )
    assert "not run: section time budget spent" in table
    assert "DALI: not run: nvidia-dali is not installed" in table
    assert "#### Grad-CAM images/s\n\nnot run:" in table
    assert "| input pipeline never the bottleneck |" in table and "**no**" in table
