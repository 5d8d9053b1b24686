"""`cellkeras batch`: the Beam pipeline against `cellkeras classify` and `cellkeras.detect`."""

import csv
import json
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from cellkeras import cli  # noqa: E402
from tests.conftest import TINY_CLASSES, write_png  # noqa: E402

CLASSES = TINY_CLASSES
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Seven images of several sizes and formats, in two folders, and one corrupt file."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("images")
    for k, (h, w) in enumerate([(24, 20), (32, 32), (20, 28), (24, 24), (40, 30), (16, 16)]):
        sub = "sub/" if k % 2 else ""
        write_png(folder / f"{sub}img{k}.png", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    write_png(folder / "sub/photo.jpg", rng.integers(0, 255, (28, 24, 3), dtype=np.uint8))
    (folder / "broken.png").write_bytes(b"this is not a PNG at all")
    return folder


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_batch_gives_the_classify_rows_in_shards_and_lists_the_bad_file(
    exported, images, tmp_path, capsys
):
    out = tmp_path / "batch"
    # The default runner: the DirectRunner with one worker process per core.
    argv = ["batch", "--input", f"{images}/**", "--model", exported, "--out", out]
    assert cli.main([str(a) for a in [*argv, "--num_shards", "3"]]) == 1
    printed = capsys.readouterr()
    assert (
        "8 file(s) matched" in printed.out and "7 decoded, 7 classified, 1 error(s)" in printed.out
    )
    assert "errors.csv" in printed.err

    classify_csv = tmp_path / "classify.csv"
    # classify fails (exit 1) on the same corrupt file and writes the other rows.
    assert (
        cli.main(["classify", str(images), "--model", str(exported), "--csv", str(classify_csv)])
        == 1
    )
    expected = {row["path"]: row for row in read_csv(classify_csv)}
    assert len(expected) == 7

    shards = sorted(out.glob("predictions-*-of-00003.csv"))
    assert [s.name for s in shards] == [f"predictions-0000{k}-of-00003.csv" for k in range(3)]
    header = ["path", "predicted_class", "probability", *CLASSES]
    merged = []
    for shard in shards:
        assert shard.read_text().splitlines()[0] == ",".join(header)  # every shard has the header
        merged.extend(read_csv(shard))
    assert sorted(r["path"] for r in merged) == sorted(expected)  # no image lost or repeated
    for row in merged:
        want = expected[row["path"]]
        assert list(row) == header
        assert row["predicted_class"] == want["predicted_class"]
        for column in ("probability", *CLASSES):
            assert float(row[column]) == pytest.approx(float(want[column]), abs=2e-6)

    errors = read_csv(out / "errors.csv")
    assert [(e["path"], e["stage"]) for e in errors] == [(str(images / "broken.png"), "decode")]
    assert errors[0]["reason"].startswith("not a recognised image")

    from cellkeras.batch import read_results

    results = read_results(str(out))
    assert [r["path"] for r in results.rows] == sorted(expected)
    assert results.detections is None and len(results.errors) == 1
    assert results.manifest["num_shards"] == 3 and results.manifest["counters"]["errors"] == 1
    assert not (out / "_checkpoint").exists()  # a finished run's outputs hold it all
    # The workers loaded the copy in OUT (remote workers cannot see the launcher's disk).
    (version,) = [d for d in exported.iterdir() if d.name.isdigit()]
    assert (out / "model.keras").read_bytes() == (version / "model.keras").read_bytes()

    # A second run into the same folder is refused (its shards would mix with these) ...
    assert cli.main([str(a) for a in [*argv, "--num_shards", "2"]]) == 1
    assert "--overwrite" in capsys.readouterr().err
    # ... unless asked to replace them: then only the new run's shards remain. An --out inside
    # the input pattern: the outputs (model.keras, shards, checkpoint) are not read as images.
    out = images / "results"
    argv = ["batch", "--input", f"{images}/**", "--model", exported, "--out", out, *IN_MEMORY]
    assert cli.main([str(a) for a in argv]) == 1
    argv = [*argv, "--num_shards", "2", "--overwrite"]
    assert cli.main([str(a) for a in argv]) == 1
    assert sorted(s.name for s in out.glob("predictions-*")) == [
        "predictions-00000-of-00002.csv",
        "predictions-00001-of-00002.csv",
    ]
    results = read_results(str(out))
    assert [r["path"] for r in results.rows] == sorted(expected) and len(results.errors) == 1
    shutil.rmtree(out)  # the module's other tests use this folder


def test_detection_shards_are_coco_with_the_boxes_of_detect(exported, images, tmp_path):
    from cellkeras.batch import BatchConfig, read_results, run_batch
    from cellkeras.detect import BoxParams, DetectConfig, detect, xyxy_to_xywh
    from cellkeras.inference.loading import load_model_for_inference
    from cellkeras.io.images import decode_raw

    model, info = load_model_for_inference(exported)
    # Grad-CAM over 16 px tiles (the generic workflow for a classifier without "background"),
    # no gate and a mid threshold, so random images still give boxes to compare.
    config = DetectConfig(
        method="gradcam",
        tile=16,
        overlap=8,
        gate=0.0,
        boxes=BoxParams(threshold="fixed", value=0.5, min_peak=0.5),
    )
    out = tmp_path / "detect"
    counters = run_batch(
        BatchConfig(
            inputs=[str(images / "*.png"), str(images / "sub" / "*")],
            model=info.model_file,
            info=info,
            out=str(out),
            detect=config,
            classify=False,
            save_heatmaps=True,
            num_shards=2,
            detection_info={"workflow": "generic"},
        ),
        IN_MEMORY,
    )
    assert counters == {
        "images_decoded": 7,
        "images_classified": 0,
        "images_detected": 7,
        "images_resumed": 0,
        "errors": 1,
    }
    shards = sorted(out.glob("detections-*-of-00002.json"))
    assert len(shards) == 2
    for shard in shards:
        document = json.loads(shard.read_text())
        assert set(document) == {"images", "annotations", "categories", "info"}
        assert document["categories"] == [{"id": 1, "name": "cell"}]
        assert document["info"]["workflow"] == "generic"
        ids = [image["id"] for image in document["images"]]
        assert ids == list(range(1, len(ids) + 1))
        sizes = {image["id"]: (image["width"], image["height"]) for image in document["images"]}
        for ann in document["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = sizes[ann["image_id"]]
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= width and y + h <= height
            assert ann["category_id"] == 1 and ann["area"] == pytest.approx(w * h, abs=0.02)

    merged = read_results(str(out)).detections
    assert len(merged["images"]) == 7
    assert [a["id"] for a in merged["annotations"]] == list(
        range(1, len(merged["annotations"]) + 1)
    )

    one = images / "sub" / "img1.png"
    (entry,) = [image for image in merged["images"] if image["file_name"] == str(one)]
    assert (out / entry["heatmap"]).is_file()
    found = detect(model, decode_raw(one.read_bytes()), config, info.channels, info.classes)
    assert len(found.boxes) > 0
    got = sorted(
        (a["bbox"], a["score"]) for a in merged["annotations"] if a["image_id"] == entry["id"]
    )
    want = sorted(
        ([round(float(v), 2) for v in box], round(float(score), 4))
        for box, score in zip(xyxy_to_xywh(found.boxes), found.scores, strict=True)
    )
    assert got == want


def test_bad_arguments_fail_before_the_pipeline(exported, images, tmp_path, capsys):
    base = ["batch", "--model", str(exported), "--out", str(tmp_path / "o")]
    pngs = ["--input", str(images / "*.png")]
    assert cli.main([*base, "--input", str(images / "*.tif")]) == 1
    assert "matches no files" in capsys.readouterr().err
    # A folder is not a pattern: Beam would skip it and report success on nothing.
    assert cli.main([*base, "--input", str(images)]) == 1
    assert f"'{images}/**'" in capsys.readouterr().err
    assert cli.main([*base, *pngs, "--no_classify"]) == 1
    assert "nothing to do" in capsys.readouterr().err
    assert cli.main([*base, *pngs, "--save_heatmaps"]) == 1
    assert "--save_heatmaps needs --detect" in capsys.readouterr().err
    assert cli.main([*base, *pngs, "--resume"]) == 1
    assert "no crashed run" in capsys.readouterr().err
    assert cli.main(["batch", "--input", "x", "--model", str(tmp_path / "none"), "--out", "o"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    for flag, value in (("--batch_size", "0"), ("--num_shards", "-1"), ("--checkpoint_every", "x")):
        with pytest.raises(SystemExit):
            cli.main([*base, *pngs, flag, value])
        assert flag in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*base, *pngs, "--resume", "--overwrite"])
    assert "not allowed with" in capsys.readouterr().err


def test_options_after_the_separator_reach_beam(exported):
    from cellkeras.cli.batch import pipeline_options

    args = cli.build_parser().parse_args(
        ["batch", "--input", "a", "--model", "m", "--out", "o", "--", "--runner=FlinkRunner"]
    )
    assert pipeline_options(args) == [
        "--direct_num_workers=0",
        "--direct_running_mode=multi_processing",
        "--runner=FlinkRunner",
    ]


def test_merge_coco_renumbers_images_and_annotations():
    from cellkeras.detect import merge_coco, to_coco

    a = to_coco([{"file_name": "a", "width": 9, "height": 9}], [np.array([[0, 0, 2, 2]])], [[0.9]])
    b = to_coco(
        [{"file_name": "b", "width": 9, "height": 9}, {"file_name": "c", "width": 9, "height": 9}],
        [np.zeros((0, 4)), np.array([[1, 1, 3, 4], [0, 0, 1, 1]])],
        [[], [0.5, 0.4]],
    )
    merged = merge_coco([a, b])
    assert [(i["id"], i["file_name"]) for i in merged["images"]] == [(1, "a"), (2, "b"), (3, "c")]
    assert [(x["id"], x["image_id"], x["bbox"]) for x in merged["annotations"]] == [
        (1, 1, [0.0, 0.0, 2.0, 2.0]),
        (2, 3, [1.0, 1.0, 2.0, 3.0]),
        (3, 3, [0.0, 0.0, 1.0, 1.0]),
    ]
    with pytest.raises(ValueError, match="categories"):
        merge_coco([a, to_coco([], [], [], category="nucleus")])


def test_a_crashed_run_keeps_its_finished_results_and_resumes(
    exported, images, tmp_path, monkeypatch
):
    from cellkeras.batch import BatchConfig, read_results, run_batch
    from cellkeras.batch import steps as batch_steps
    from cellkeras.inference.loading import load_model_for_inference

    _, info = load_model_for_inference(exported)
    out = tmp_path / "crash"

    def config(**kw):
        # Both patterns match sub/img1.png: it must still be classified once.
        inputs = [str(images / "**"), str(images / "sub" / "img1.png")]
        return BatchConfig(inputs, info.model_file, info, str(out), num_shards=2, **kw)

    # The 5th image to reach the CSV step kills the run (as a lost worker or Ctrl-C would).
    original, seen = batch_steps.PredictionCsvFn.process, []

    def crash_on_the_fifth(self, element):
        seen.append(element[0])
        if len(seen) == 5:
            raise RuntimeError("simulated crash")
        yield from original(self, element)

    monkeypatch.setattr(batch_steps.PredictionCsvFn, "process", crash_on_the_fifth)
    with pytest.raises(Exception, match="simulated crash"):
        run_batch(config(checkpoint_every=2), IN_MEMORY)
    assert not list(out.glob("predictions-*")) and not (out / "batch.json").exists()
    saved = sorted((out / "_checkpoint").glob("predictions-*.jsonl"))
    done = [json.loads(line)[0] for f in saved for line in f.read_text().splitlines()]
    assert len(saved) == 2 and sorted(done) == sorted(seen[:4])  # saved every 2 images

    # Mark the saved rows, so the resumed outputs show they were taken, not computed again.
    for f in saved:
        lines = [json.loads(line) for line in f.read_text().splitlines()]
        f.write_text("".join(json.dumps([p, row + "9"]) + "\n" for p, row in lines))
    monkeypatch.setattr(batch_steps.PredictionCsvFn, "process", original)
    with pytest.raises(FileExistsError, match="--resume"):
        run_batch(config(), IN_MEMORY)  # neither --resume nor --overwrite
    counters = run_batch(config(resume=True), IN_MEMORY)
    assert counters["images_resumed"] == 4 and counters["images_classified"] == 3
    assert counters["errors"] == 1 and not (out / "_checkpoint").exists()

    rows = read_results(str(out)).rows
    assert sorted(r["path"] for r in rows) == sorted(
        str(p) for p in images.rglob("*") if p.is_file() and p.name != "broken.png"
    )
    resumed = {r["path"] for r in rows if r["gamma"].endswith("9") and len(r["gamma"]) == 9}
    assert resumed == set(done)
    with pytest.raises(FileExistsError, match="finished run"):
        run_batch(config(resume=True), IN_MEMORY)


def test_one_image_the_model_fails_on_costs_only_itself(monkeypatch):
    from cellkeras.batch import ClassifyModelHandler, Failure
    from cellkeras.inference import predict as predict_module

    def predict(model, images, batch_size):
        if np.isnan(images).any():
            raise ValueError("NaN input")
        return np.tile([[0.2, 0.8]], (len(images), 1))

    monkeypatch.setattr(predict_module, "predict", predict)
    batch = [np.zeros((4, 4, 1), np.float32) for _ in range(3)]
    batch[1][0, 0] = np.nan
    results = ClassifyModelHandler("m.keras").run_inference(batch, model=None)
    assert [type(r.inference).__name__ for r in results] == ["ndarray", "Failure", "ndarray"]
    assert results[1].inference == Failure("ValueError: NaN input")


def test_plan_reruns_a_file_unless_every_task_saved_it_and_batches_the_rest():
    from apache_beam.io.filesystem import FileMetadata

    from cellkeras.batch.steps import PlanBatchesFn

    plan = PlanBatchesFn(["predictions", "detections"], batch_size=2)

    def run(files, predictions, detections):
        element = (
            0,
            {
                "file": [FileMetadata(f, 1) for f in files],
                "seed": [None],
                "predictions": predictions,
                "detections": detections,
            },
        )
        return [
            (tag, [m.path for m in value] if tag == "run" else value)
            for tag, value in plan.process(element)
        ]

    # Saved by both tasks (twice by one: a retried bundle): taken once each, not read again.
    done = [("a.png", "row"), ("a.png", "row")], [("a.png", {"boxes": []})]
    assert run(["a.png"], *done) == [
        ("predictions", ("a.png", "row")),
        ("detections", ("a.png", {"boxes": []})),
    ]
    # Detection missing: run it again (its saved row is dropped, not written twice).
    assert run(["a.png"], [("a.png", "row")], []) == [("run", ["a.png"])]
    assert run(["a.png", "a.png"], [], []) == [("run", ["a.png"])]  # two patterns: one run
    assert run([], [("a.png", "row")], [("a.png", {})]) == []  # no longer an input: dropped
    # The rest in path order, in the fewest batches of at most 2, of equal sizes.
    assert run(["e", "c", "a", "d", "b"], [], []) == [
        ("run", ["a", "b"]),
        ("run", ["c", "d"]),
        ("run", ["e"]),
    ]


def test_batches_are_even():
    from cellkeras.batch.steps import batches

    assert [len(b) for b in batches(list(range(33)), 32)] == [17, 16]
    assert [len(b) for b in batches(list(range(64)), 32)] == [32, 32]
    assert batches([], 4) == [] and batches([1], 4) == [[1]]


def test_the_graph_keeps_to_what_the_dask_runner_runs_correctly(exported, images):
    """Beam 2.77's Dask runner mixes the outputs of a multi-output ParDo, re-evaluates side
    inputs at each use, drops what `finish_bundle` emits and computes only the last transform:
    the graph must have none of the first three and end in the step every output leads to."""
    import apache_beam as beam
    from apache_beam.pipeline import PipelineVisitor

    from cellkeras.batch import BatchConfig, build_pipeline
    from cellkeras.detect import DetectConfig
    from cellkeras.inference.loading import load_model_for_inference

    _, info = load_model_for_inference(exported)
    config = BatchConfig([str(images / "**")], info.model_file, info, "/nowhere", DetectConfig())
    p = beam.Pipeline()
    outputs = build_pipeline(p, config)
    assert set(outputs) == {"predictions", "detections", "errors", "summary"}

    leaves = []

    class Leaves(PipelineVisitor):
        def visit_transform(self, node):
            leaves.append(node)

    p.visit(Leaves())
    assert [n.full_label for n in leaves if len(n.outputs) > 1] == []
    assert [n.full_label for n in leaves if n.side_inputs] == []
    labels = " ".join(n.full_label for n in leaves)
    assert "BatchElements" not in labels and "WriteToText" not in labels
    assert leaves[-1].full_label == "WriteSummary"


def test_short_runner_names_and_the_summary_check(tmp_path):
    from cellkeras.batch import runner_options
    from cellkeras.batch.outputs import read_summary

    dask = "apache_beam.runners.dask.dask_runner.DaskRunner"
    assert runner_options(["--runner=DaskRunner", "--x=1"]) == [f"--runner={dask}", "--x=1"]
    assert runner_options(["--runner", "dask"]) == ["--runner", dask]
    assert runner_options(["--runner=FlinkRunner"]) == ["--runner=FlinkRunner"]

    # A runner that reports success without running the last step, or without every output.
    with pytest.raises(RuntimeError, match="last step did not run"):
        read_summary(str(tmp_path), ["predictions"], 2)
    (tmp_path / "_checkpoint").mkdir()
    wrote = [str(tmp_path / "errors.csv"), str(tmp_path / "predictions-00000-of-00002.csv")]
    summary = {"files": wrote, "counters": {"errors": 0}}
    (tmp_path / "_checkpoint" / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(RuntimeError, match="predictions-00001-of-00002.csv"):
        read_summary(str(tmp_path), ["predictions"], 2)
    summary["files"].append(str(tmp_path / "predictions-00001-of-00002.csv"))
    (tmp_path / "_checkpoint" / "summary.json").write_text(json.dumps(summary))
    assert read_summary(str(tmp_path), ["predictions"], 2) == {"errors": 0}


def test_a_dask_runner_that_cannot_start_fails_before_anything_is_written(
    exported, images, tmp_path, monkeypatch, capsys
):
    import socket

    pytest.importorskip("distributed")
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "o"
    argv = ["batch", "--input", str(images / "*.png"), "--model", str(exported), "--out", str(out)]
    dask = ["--", "--runner=DaskRunner", f"--dask_client_address=tcp://127.0.0.1:{port}"]
    assert cli.main([*argv, *dask, "--dask_connection_timeout=1"]) == 1
    assert f"--dask_client_address=tcp://127.0.0.1:{port}: no Dask scheduler" in (
        capsys.readouterr().err
    )
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    assert cli.main([*argv, *dask]) == 1
    assert "pip install 'cellkeras[beam]'" in capsys.readouterr().err
    assert not out.exists()
