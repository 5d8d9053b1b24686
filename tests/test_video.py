"""Video segments: spec parsing, frame selection, class folders and the CLI command."""

import csv

import cv2
import numpy as np
import pytest

from cellkeras.cli import main
from cellkeras.data.imageset import ImageSet
from cellkeras.data.sources import load_class_folders, load_labels_csv
from cellkeras.data.video import (
    Segment,
    contact_sheet,
    load_video_segments,
    parse_segments,
    probe_video,
    write_class_folders,
)

FPS = 5
N_FRAMES = 40
STEP = 6  # frame i is filled with grey level STEP * i, so a frame's mean names its index


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 40-frame, 5 fps, 48x32 MJPG video whose frame i has brightness 6 * i (8 s long)."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (48, 32))
    assert writer.isOpened()
    for i in range(N_FRAMES):
        writer.write(np.full((32, 48, 3), STEP * i, np.uint8))
    writer.release()
    return path


def frame_indices(imageset):
    """Recovers each kept frame's index from its brightness (MJPG is lossy by a grey level or so)."""
    means = imageset.images.reshape(len(imageset), -1).mean(axis=1)
    return np.rint(means / STEP).astype(int).tolist()


# --- parse_segments ------------------------------------------------------------------------------


def test_parse_segments_default_unit_and_suffixes():
    segs = parse_segments("gastrula=32:82, comma = 116:126,fold=140s:187.5s", unit="seconds")
    assert segs == [
        Segment("gastrula", 32, 82, "seconds"),
        Segment("comma", 116, 126, "seconds"),
        Segment("fold", 140, 187.5, "seconds"),
    ]
    segs = parse_segments("a=0:10,b=3s:4s", unit="frames")
    assert [(s.unit, s.start, s.end) for s in segs] == [("frames", 0, 10), ("seconds", 3, 4)]


def test_parse_segments_repeated_class_and_mapping():
    segs = parse_segments("comma=116:126,fold=130:140,comma=300:310")
    assert [s.label for s in segs] == ["comma", "fold", "comma"]
    segs = parse_segments({"a": "0f:10f", "b": [(10, 12), (20, 22)]}, unit="frames")
    assert [(s.label, s.start, s.end, s.unit) for s in segs] == [
        ("a", 0, 10, "frames"),
        ("b", 10, 12, "frames"),
        ("b", 20, 22, "frames"),
    ]


@pytest.mark.parametrize(
    ("spec", "unit", "message"),
    [
        ("gastrula32:82", "seconds", "gastrula32:82"),  # no '='
        ("a=1:2:3", "seconds", "a=1:2:3"),
        ("a=x:5", "seconds", "'x' is not a number"),
        ("a=5:5", "seconds", "a=5:5"),  # start >= end
        ("ok=0:1,a=9:3", "seconds", "a=9:3"),
        ("a=1.5:4", "frames", "integers"),
        ("a=1s:4f", "seconds", "same unit"),
        ("a=0:10,b=5:15", "seconds", "overlap"),
        ("a=0:1,,b=2:3", "seconds", "empty segment"),
        ("bad/name=0:1", "seconds", "bad/name"),
        ("", "seconds", "empty segment"),
    ],
)
def test_parse_segments_errors_name_the_segment(spec, unit, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_segments(spec, unit=unit)


def test_parse_segments_rejects_unknown_unit():
    with pytest.raises(ValueError, match="unit"):
        parse_segments("a=0:1", unit="minutes")


# --- load_video_segments --------------------------------------------------------------------------


def test_probe_video(video):
    info = probe_video(video)
    assert (info.fps, info.frame_count, info.width, info.height) == (5.0, 40, 48, 32)
    assert info.duration_s == pytest.approx(8.0)


def test_load_by_seconds(video):
    # [1 s, 2 s) is frames 5-9 and [4 s, 5.2 s) frames 20-25 at 5 fps; labels follow first use.
    s = load_video_segments(video, "late=4:5.2,early=1:2", unit="seconds")
    assert s.classes == ["late", "early"]
    assert frame_indices(s) == [5, 6, 7, 8, 9, 20, 21, 22, 23, 24, 25]
    assert s.labels.tolist() == [1] * 5 + [0] * 6
    np.testing.assert_allclose(s.order, np.array(frame_indices(s)) / FPS)
    assert s.images.shape == (11, 32, 48, 3) and s.images.dtype == np.uint8
    assert s.groups is None and s.name == "clip"


def test_load_by_frames_repeated_class_and_step(video):
    s = load_video_segments(video, "a=0:4,b=10:13,a=30:40", unit="frames", frame_step=2)
    assert frame_indices(s) == [0, 2, 10, 12, 30, 32, 34, 36, 38]
    assert [s.classes[k] for k in s.labels] == ["a", "a", "b", "b"] + ["a"] * 5
    assert s.class_counts().tolist() == [7, 2]


def test_load_mixed_units_and_last_frame(video):
    s = load_video_segments(video, "a=0s:0.4s,b=38f:40f")
    assert frame_indices(s) == [0, 1, 38, 39]


def test_load_downscales_and_grayscale(video):
    s = load_video_segments(video, "a=0:5", unit="frames", max_side=24, channels=1)
    assert s.images.shape == (5, 16, 24, 1)
    assert frame_indices(s) == [0, 1, 2, 3, 4]


def test_segment_beyond_end_names_file_and_length(video):
    with pytest.raises(ValueError) as err:
        load_video_segments(video, "a=1:2,b=7:9", unit="seconds")
    msg = str(err.value)
    assert str(video) in msg and "b=7s:9s" in msg
    assert "8.00 s" in msg and "40 frames" in msg and "5 fps" in msg
    with pytest.raises(ValueError, match="40 frames"):
        load_video_segments(video, "a=40:41", unit="frames")


def test_segment_without_frames(video):
    # [0.1 s, 0.15 s) falls between frame 0 (0 s) and frame 1 (0.2 s).
    with pytest.raises(ValueError, match=r"a=0.1s:0.15s.*no frame"):
        load_video_segments(video, "a=0.1:0.15")


def test_overlap_across_units(video):
    with pytest.raises(ValueError, match="overlap"):
        load_video_segments(video, "a=0s:1s,b=4f:8f")


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nope.avi"
    with pytest.raises(ValueError, match="nope.avi"):
        load_video_segments(missing, "a=0:1")
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video" * 50)
    with pytest.raises(ValueError, match="junk.avi"):
        load_video_segments(junk, "a=0:1")


def test_zero_fps_needs_explicit_fps(video, monkeypatch):
    real = cv2.VideoCapture

    class NoFps:
        def __init__(self, path):
            self._cap = real(path)

        def get(self, prop):
            return 0.0 if prop == cv2.CAP_PROP_FPS else self._cap.get(prop)

        def __getattr__(self, name):
            return getattr(self._cap, name)

    monkeypatch.setattr(cv2, "VideoCapture", NoFps)
    with pytest.raises(ValueError, match="fps="):
        load_video_segments(video, "a=0:1")
    s = load_video_segments(video, "a=0:1", fps=10)  # frames 0-9 at the stated 10 fps
    assert frame_indices(s) == list(range(10))


# --- write_class_folders -------------------------------------------------------------------------


def read_labels_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_write_class_folders_round_trip(video, tmp_path):
    s = load_video_segments(video, "a=0:3,b=10:12", unit="frames")
    out = write_class_folders(s, tmp_path / "out", fps=FPS)
    rows = read_labels_csv(out / "labels.csv")
    assert rows[0] == ["filename", "label", "frame", "sequence"]
    assert rows[1:] == [
        ["a/clip_000000.png", "a", "0", "clip"],
        ["a/clip_000001.png", "a", "1", "clip"],
        ["a/clip_000002.png", "a", "2", "clip"],
        ["b/clip_000010.png", "b", "10", "clip"],
        ["b/clip_000011.png", "b", "11", "clip"],
    ]
    for row, expected in zip(rows[1:], s.images, strict=True):
        pixels = cv2.cvtColor(cv2.imread(str(out / row[0])), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(pixels, expected)  # PNG is lossless
    assert read_labels_csv(out / "frames.csv") == [
        ["filename", "sequence", "frame"],
        *[[r[0], "clip", r[2]] for r in rows[1:]],
    ]
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "frames.csv", "labels.csv"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folders left behind
    # Both sources read the frames' order back.
    for loaded in (load_class_folders(out), load_labels_csv(out / "labels.csv")):
        assert loaded.order.tolist() == [0, 1, 2, 10, 11]
        assert loaded.sequence.tolist() == ["clip"] * 5


def test_write_class_folders_refuses_then_overwrites(tmp_path):
    s1 = ImageSet(classes=["x"], labels=[0], images=np.zeros((1, 4, 4, 1), np.uint8), name="one")
    s2 = ImageSet(classes=["y"], labels=[0, 0], images=np.ones((2, 4, 4, 3), np.uint8), name="two")
    out = write_class_folders(s1, tmp_path / "out")
    assert (out / "x" / "one_000000.png").is_file()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_class_folders(s2, out)
    assert (out / "x" / "one_000000.png").is_file()  # untouched after the refusal
    write_class_folders(s2, out, overwrite=True, image_format="tif")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "labels.csv",
        "y",
        "y/two_000000.tif",
        "y/two_000001.tif",
    ]
    (tmp_path / "empty").mkdir()
    write_class_folders(s1, tmp_path / "empty")  # an existing empty folder is fine


def test_contact_sheet_shape():
    images = [np.full((20, 30), v, np.uint16) for v in (0, 1000, 60000)]
    sheet = contact_sheet(images, ["a", "b", "c"], ncols=2, tile_side=60)
    assert sheet.shape == (80, 120, 3) and sheet.dtype == np.uint8


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_video_to_folders(video, tmp_path, capsys):
    out = tmp_path / "folders"
    code = main(
        [
            "video-to-folders",
            str(video),
            "--segments",
            "early=0:1,late=6:7",
            "--out",
            str(out),
            "--max_side",
            "24",
            "--frame_step",
            "2",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "5 fps" in text
    assert "early" in text and "0.00-1.00 s" in text and "6.00-7.00 s" in text
    rows = read_labels_csv(out / "labels.csv")
    assert [r[0] for r in rows[1:]] == [
        "early/clip_000000.png",
        "early/clip_000002.png",
        "early/clip_000004.png",
        "late/clip_000030.png",
        "late/clip_000032.png",
        "late/clip_000034.png",
    ]
    assert cv2.imread(str(out / rows[1][0])).shape == (16, 24, 3)


def test_cli_video_to_folders_reports_errors(video, tmp_path, capsys):
    code = main(
        ["video-to-folders", str(video), "--segments", "a=0:99", "--out", str(tmp_path / "o")]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "beyond" in err and "8.00 s" in err
    assert not (tmp_path / "o").exists()


def _frame_of(path):
    return int(path.rsplit("_", 1)[1].split(".")[0])


@pytest.mark.slow
def test_video_to_folders_then_training_splits_by_time(video, tmp_path):
    """The documented route: video-to-folders, then the trainer on the tree. No validation
    frame may have a training frame next to it, across the class boundary included."""
    from cellkeras.data.splits import split_imageset
    from trainer.config import build_config
    from trainer.task import run

    out = tmp_path / "frames"
    spec = "a=0:20,b=20:40"  # adjacent segments: frames 19 and 20 are near-copies
    args = ["video-to-folders", str(video), "--segments", spec, "--unit", "frames"]
    assert main([*args, "--out", str(out)]) == 0
    assert sorted(_frame_of(p.name) for p in out.rglob("*.png")) == list(range(N_FRAMES))
    config = build_config(
        "smoke",
        {
            "data.data_dir": str(out),
            "train.schedule": "16:1",
            "train.batch_size": 8,
            "train.model": "edge",
            "train.augment": "none",
        },
    )
    config.output_dir = str(tmp_path / "run")
    metrics = run(config, verbose=0)

    split_csv = tmp_path / "run" / "split.csv"
    if split_csv.is_file():  # written by the trainer where it records its split
        rows = read_labels_csv(split_csv)
        at = {name: i for i, name in enumerate(rows[0])}
        sides = {_frame_of(r[at["path"]]): r[at["split"]] for r in rows[1:]}
        train = {f for f, side in sides.items() if side == "train"}
        val = {f for f, side in sides.items() if side in ("val", "validation")}
    else:  # the trainer's own split, from the same function and arguments
        train_set, val_set = split_imageset(
            load_class_folders(out), config.data.val_fraction, seed=config.train.seed
        )
        train = {_frame_of(p) for p in train_set.paths}
        val = {_frame_of(p) for p in val_set.paths}
    assert (len(train), len(val)) == (metrics["train_images"], metrics["val_images"])
    assert val and train and not train & val
    beside = sorted(f for f in val if {f - 1, f + 1} & train)
    assert beside == [], f"validation frames {beside} have a training frame next to them"


def test_stages_cut_from_a_video_train_an_ordinal_head_in_their_time_order(video, tmp_path):
    import keras

    from cellkeras.data.frames import time_ranks
    from cellkeras.models import OrdinalLogits
    from trainer.config import build_config
    from trainer.task import run

    out = tmp_path / "frames"
    spec = "late=0:12,early=12:24,mid=24:40"  # folder (alphabetical) order is not time order
    args = ["video-to-folders", str(video), "--segments", spec, "--unit", "frames"]
    assert main([*args, "--out", str(out)]) == 0
    stages = load_class_folders(out)
    assert stages.classes == ["early", "late", "mid"]
    assert time_ranks(stages) == [1, 0, 2]  # late first, then early, then mid
    # Without the manifest the same folders say nothing about time.
    (out / "frames.csv").unlink()
    assert time_ranks(load_class_folders(out)) is None

    overrides = {
        "data.data_dir": str(out),
        "train.schedule": "16:1",
        "train.batch_size": 8,
        "train.model": "edge",
        "train.ordinal": "time",
    }
    config = build_config("smoke", overrides)
    config.output_dir = str(tmp_path / "untimed")
    with pytest.raises(ValueError, match="--ordinal=time needs .* have no frame order"):
        run(config, verbose=0)
    assert main([*args, "--out", str(out), "--overwrite"]) == 0
    config = build_config("smoke", overrides)
    config.output_dir = str(tmp_path / "run")
    run(config, verbose=0)
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    head = model.get_layer("edge_logits")
    assert isinstance(head, OrdinalLogits) and head.ranks == [1, 0, 2]


@pytest.mark.parametrize(
    "labels,order,sequence,ranks,reason",
    [
        ([1, 1, 0, 0, 2, 2], [0, 1, 2, 3, 5, 6], None, [1, 0, 2], ""),
        # Two sequences each order two classes; together they order all three.
        ([1, 0, 0, 2], [0, 1, 2, 3], ["x", "x", "y", "y"], [1, 0, 2], ""),
        ([1, 0, 1, 0, 2, 2], [0, 1, 2, 3, 5, 6], None, None, "a and b sharing time"),
        ([1, 0, 2, 0], [0, 1, 2, 3], ["x", "x", "y", "y"], None, "which of a, c comes first"),
        ([1, 0, 0, 1, 2, 2], [0, 1, 2, 3, 4, 5], list("xxyyzz"), None, "order the classes differ"),
        ([1, 0, 0], [0, 1, np.nan], None, None, "not finite"),
        ([1, 0, 0], [0, 1, 2], None, None, "no images of c"),
        ([1, 0, 2], None, None, None, "no frame order"),
    ],
)
def test_time_order_ranks_stages_or_says_why_not(labels, order, sequence, ranks, reason):
    from cellkeras.data.frames import time_order

    images = ImageSet(
        classes=["b", "a", "c"],
        labels=labels,
        images=np.zeros((len(labels), 2, 2, 1), np.uint8),
        order=None if order is None else np.asarray(order, float),
        sequence=None if sequence is None else np.asarray(sequence),
    )
    got, why = time_order(images)
    assert got == ranks
    assert reason in why and (why == "") == (ranks is not None)
