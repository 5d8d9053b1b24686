"""Packaged samples: install hints, mask-to-box conversion, embryo stages and nuclei patches."""

import importlib.util

import numpy as np
import pytest

from cellkeras.data import samples
from cellkeras.data.samples import (
    EMBRYO_STAGES,
    MissingSampleError,
    NucleiSample,
    instance_boxes,
    nuclei_patches,
    sample_path,
)
from cellkeras.data.splits import block_split


def test_missing_package_error_prints_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(MissingSampleError, match=r"pip install --no-deps devolearn==0\.3\.0"):
        sample_path("devolearn", "tests/sample_data/videos/embryo_timelapse.mov")
    with pytest.raises(MissingSampleError, match=r"pip install --no-deps ndev-sampledata==0\.0\.3"):
        samples.nuclei_sample()
    with pytest.raises(MissingSampleError, match="pip install --no-deps some-pkg"):
        sample_path("some_pkg", "x.txt")
    assert issubclass(MissingSampleError, RuntimeError)


def test_missing_file_in_installed_package(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_loader("fakepkg", loader=None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec)
    with pytest.raises(MissingSampleError, match="has no data/x.tif"):
        sample_path("fakepkg", "data/x.tif")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.tif").write_bytes(b"")
    assert sample_path("fakepkg", "data/x.tif") == tmp_path / "data" / "x.tif"


def test_instance_boxes_match_hand_made_labels():
    label = np.zeros((10, 12), np.uint16)
    label[2:5, 3:7] = 4  # rows 2-4, columns 3-6
    label[0, 0] = 1  # a single pixel in the corner
    label[6:10, 9:12] = 2  # touching the bottom-right border
    label[7, 1] = 2  # the same instance in two pieces widens its box
    ids, boxes = instance_boxes(label)
    assert ids.tolist() == [1, 2, 4]  # id 3 is absent: skipped, not an empty box
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(
        boxes,
        [
            [0, 0, 1, 1],
            [1, 6, 12, 10],
            [3, 2, 7, 5],
        ],
    )
    ids, boxes = instance_boxes(np.zeros((4, 4), np.int32))
    assert ids.shape == (0,) and boxes.shape == (0, 4)
    with pytest.raises(ValueError, match="2-D"):
        instance_boxes(np.zeros((2, 4, 4), np.int32))


def synthetic_nuclei():
    """One 64x64 frame: a 6x6 nucleus centred at (20, 20), one at (44, 44) and a background."""
    images = np.full((1, 64, 64), 500, np.uint16)
    labels = np.zeros((1, 64, 64), np.int32)
    for k, (y, x) in enumerate([(17, 17), (41, 41)], start=1):
        labels[0, y : y + 6, x : x + 6] = k
        images[0, y : y + 6, x : x + 6] = 5000
    return NucleiSample(images=images, labels=labels)


def test_nuclei_sample_boxes_method():
    sample = synthetic_nuclei()
    np.testing.assert_array_equal(sample.boxes(0), [[17, 17, 23, 23], [41, 41, 47, 47]])


def test_nuclei_patches_rules_on_synthetic_frame():
    sample = synthetic_nuclei()
    s = nuclei_patches(patch_size=16, stride=4, seed=0, sample=sample)
    assert s.classes == ["background", "nucleus"]
    assert s.images.shape[1:] == (16, 16, 1) and s.images.dtype == np.uint16
    assert set(s.groups.tolist()) == {0}
    for img, lab in zip(s.images[..., 0], s.labels, strict=True):
        centre = img[4:12, 4:12]
        if lab == 1:
            assert centre.max() == 5000  # a centroid (so nucleus pixels) in the centre
        else:
            assert centre.max() == 500  # no nucleus pixel in the centre
    assert s.class_counts().min() > 0


def test_nuclei_patches_drop_unlabelled_bright_objects():
    sample = synthetic_nuclei()
    sample.images[0, 50:56, 5:11] = 6000  # a bright nucleus the labels missed
    kept = nuclei_patches(patch_size=16, stride=2, sample=sample)
    dropped = nuclei_patches(patch_size=16, stride=2, sample=sample, drop_unlabelled=False)
    bright_bg = [
        img[4:12, 4:12].max() == 6000 for img in dropped.images[dropped.labels == 0, ..., 0]
    ]
    assert any(bright_bg)
    assert not any(img[4:12, 4:12].max() == 6000 for img in kept.images[..., 0])


# --- the installed samples -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def embryo():
    return samples.embryo_stages(max_side=128, channels=1)


@pytest.mark.samples
def test_embryo_stages_classes_and_counts(embryo):
    expected = [name for name, _, _ in EMBRYO_STAGES]
    assert (
        embryo.classes
        == expected
        == [
            "cleavage_1_4",
            "cleavage_8_16",
            "early_gastrula",
            "gastrula",
            "late_gastrula",
            "bean",
            "comma",
            "fold",
        ]
    )
    counts = [last - first + 1 for _, first, last in EMBRYO_STAGES]
    assert embryo.class_counts().tolist() == counts == [14, 21, 39, 73, 37, 45, 58, 14]
    assert embryo.images.shape == (301, 87, 128, 1) and embryo.images.dtype == np.uint8
    frames = np.rint(embryo.order * 7).astype(int)
    for k, (_, first, last) in enumerate(EMBRYO_STAGES):
        assert frames[embryo.labels == k].tolist() == list(range(first, last + 1))


@pytest.mark.samples
def test_embryo_stages_block_split(embryo):
    train, val = block_split(embryo.order, embryo.labels, 0.2, block_size=4, gap=1, seed=0)
    assert set(embryo.labels[train]) == set(embryo.labels[val]) == set(range(8))


@pytest.mark.samples
def test_nuclei_sample_layout_and_boxes():
    sample = samples.nuclei_sample()
    assert sample.images.shape == sample.labels.shape == (10, 210, 576)
    assert sample.images.dtype == np.uint16
    assert sample.pixel_size_um == pytest.approx(0.619)
    counts = [len(sample.boxes(t)) for t in range(len(sample))]
    assert counts == [len(np.unique(sample.labels[t])) - 1 for t in range(len(sample))]
    assert min(counts) == 59 and max(counts) == 83
    # Nuclei are brighter than the background they sit on: the stain and labels line up.
    img, lab = sample.images[0], sample.labels[0]
    assert np.median(img[lab > 0]) > 1.5 * np.median(img[lab == 0])
    boxes = sample.boxes(0)
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 2] <= 576).all()


@pytest.mark.samples
def test_nuclei_patches_from_sample():
    s = nuclei_patches(frames=[0, 5], patch_size=32, seed=0)
    assert s.classes == ["background", "nucleus"]
    assert set(s.groups.tolist()) == {0, 5}
    counts = s.class_counts()
    assert counts[1] > 60 and counts[0] > counts[1]  # ~one nucleus patch per nucleus
