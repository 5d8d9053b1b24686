"""Per-stage augmentation strength: weak on a progressive schedule's small images, the full
`train.stage_strength` END at its final size, and what reaches the augmenter."""

import pytest

from cellkeras.training import parse_schedule
from trainer.inputs import parse_strength_ramp, stage_strength


def test_strength_grows_with_the_stage_side_from_start_to_end():
    stages = parse_schedule("64x94:2,96x141:1,128x188:1")
    strengths = [stage_strength(stages, i, "0.2:1.4") for i in range(3)]
    # Linear in the larger side: 94 -> 0.2, 188 -> 1.4, 141 halfway.
    assert strengths == pytest.approx([0.2, 0.8, 1.4])
    assert [stage_strength(stages, i) for i in range(3)] == pytest.approx([0.5, 0.75, 1.0])


def test_a_fixed_size_run_trains_at_end_like_a_progressive_runs_last_stage():
    fixed, progressive = parse_schedule("128:4"), parse_schedule("64:2,128:1")
    assert stage_strength(fixed, 0, "0.3:1.5") == pytest.approx(1.5)
    assert stage_strength(progressive, 1, "0.3:1.5") == stage_strength(fixed, 0, "0.3:1.5")
    assert stage_strength(progressive, 0, "1.2") == pytest.approx(1.2)  # END alone: no ramp


@pytest.mark.parametrize(
    ("spec", "message"),
    [("weak:1", "not START:END"), ("0.5:1:2", "not START:END"), ("-1:1", "not START:END"),
     ("1:0.5", "START 1 is above END 0.5")],
)  # fmt: skip
def test_bad_ramps_are_refused_naming_the_field(spec, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse_strength_ramp(spec)
    assert "train.stage_strength" in str(caught.value)


class _Stop(Exception):
    pass


def test_each_stage_builds_its_augmenter_at_its_strength(tmp_path, monkeypatch):
    """The trainer's per-stage data asks for each stage's strength (training replaced by a
    pass over the phases' data: only what the augmenter is built with matters here)."""
    import trainer.inputs
    from cellkeras.training import PhaseRunner
    from trainer.config import build_config
    from trainer.task import run

    built = []
    real = trainer.inputs.build_augmenter

    def recording(preset, **kw):
        built.append((kw["image_size"], kw["strength"]))
        return real(preset, **kw)

    def data_only(self, data_for, **kw):
        built.clear()  # the epoch sizing in Inputs.load builds one too; not a stage's
        for phase in self.phases:
            data_for(phase, True, range(1))
        raise _Stop

    monkeypatch.setattr(trainer.inputs, "build_augmenter", recording)
    monkeypatch.setattr(PhaseRunner, "run", data_only)
    overrides = {
        "data.synthetic_images": 32,
        "train.schedule": "16:1,32:1",
        "train.augment": "basic",
    }
    config = build_config("smoke", {**overrides, "train.stage_strength": "0.25:1.5"})
    config.output_dir = str(tmp_path / "run")
    with pytest.raises(_Stop):
        run(config, verbose=0)
    assert built == [((16, 16), 0.25), ((32, 32), 1.5)]

    config.output_dir = str(tmp_path / "bad")
    config.train.stage_strength = "1:0"
    with pytest.raises(ValueError, match="train.stage_strength"):
        run(config, verbose=0)
    assert not (tmp_path / "bad").exists()  # refused before the run folder was made


@pytest.fixture
def bench(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    import importlib

    return importlib.import_module("bench_progressive")


def _row(bench, schedule, seed, accuracy, epoch_seconds, stages):
    clock, t = [], 0.0
    for s in epoch_seconds:
        t += s
        clock.append((t, 0.5))
    arm = "fixed" if len(stages) == 1 else "progressive"
    key = bench.run_key("embryo", schedule, seed, {"deterministic": True}, "abc")
    return {"key": key, "dataset": "embryo", "arm": arm, "schedule": schedule, "seed": seed,
            "test_accuracy": accuracy, "seconds": t, "epochs": clock,
            "stages": [{"size": size, "epochs": n} for size, n in stages]}  # fmt: skip


def test_bench_cache_keeps_whole_lines_and_the_table_pairs_seeds(bench, tmp_path):
    fixed = [(_row(bench, "128:3", s, a, [30, 20, 20], [((128, 128), 3)])) for s, a in
             [(0, 0.8), (1, 0.9)]]  # fmt: skip
    progressive = [
        _row(bench, "64:2,128:1", s, a, [12, 5, 21], [((64, 64), 2), ((128, 128), 1)])
        for s, a in [(0, 0.9), (1, 0.85)]
    ]
    path = tmp_path / "runs.jsonl"
    for row in fixed + progressive:
        bench.append_run(path, row)
    with path.open("a") as handle:
        handle.write('{"key": "torn')  # a kill mid-write
    cache = bench.load_cache(path)
    assert sorted(cache) == sorted(r["key"] for r in fixed + progressive)
    # Epoch cost per stage: the first epoch apart (it retraces), the median of the rest.
    assert bench.epoch_costs(progressive[0]) == [("64x64", 12.0, 5.0), ("128x128", 21.0, None)]
    table = bench.summarize(list(cache.values()), ["embryo"])
    # 38 s against 70 s for each seed: 0.54x; 0.875 reaches the fixed mean of 0.85.
    assert "| embryo | `64:2,128:1` | 2 | 0.875 ± 0.035 (0.900 / 0.850) | 38 | 0.54x" in table
    assert "yes (+0.025)" in table
