"""Class-folder trees, CSV label files and the up-front image check."""

import numpy as np
import pytest

from cellkeras.data import BadInputError, check_images, load_class_folders, load_labels_csv
from tests.conftest import write_png


def test_class_folders(class_tree):
    images = load_class_folders(class_tree)
    assert images.classes == ["alpha", "beta", "gamma"]
    assert images.class_counts().tolist() == [6, 6, 6]
    assert images.split is None
    assert all(p.endswith(".png") for p in images.paths)


def test_blood_cell_split_layout(tmp_path):
    root = tmp_path / "images"
    for split, count in (("TRAIN", 3), ("TEST", 2)):
        for name in ("EOSINOPHIL", "LYMPHOCYTE"):
            for i in range(count):
                write_png(root / split / name / f"_{i}.jpeg.png", np.zeros((9, 9, 3), np.uint8))
    images = load_class_folders(root)
    assert images.classes == ["EOSINOPHIL", "LYMPHOCYTE"]
    assert sorted(images.split.tolist()) == ["test"] * 4 + ["train"] * 6


def test_empty_class_folder_is_an_error_or_recorded(class_tree):
    (class_tree / "delta").mkdir()
    with pytest.raises(BadInputError, match="delta: class folder holds no image files"):
        load_class_folders(class_tree)
    images = load_class_folders(class_tree, skip_bad_images=True)
    assert images.classes == ["alpha", "beta", "gamma"]
    assert [why for _, why in images.skipped] == ["class folder holds no image files"]


def test_csv_names_and_indices(class_tree):
    csv = class_tree / "labels.csv"
    csv.write_text("filename,label\nalpha/0.png,alpha\nbeta/1.png,beta\ngamma/2.png,gamma\n")
    images = load_labels_csv(csv)
    assert images.classes == ["alpha", "beta", "gamma"]
    assert images.labels.tolist() == [0, 1, 2]
    csv.write_text("alpha/0.png,2\nbeta/1.png,0\n")  # no header, indices
    images = load_labels_csv(csv, classes=["x", "y", "z"])
    assert images.labels.tolist() == [2, 0]


def test_csv_bad_rows_are_all_named(class_tree, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "filename,label\nalpha/0.png,0\nalpha/missing.png,0\n../../etc/passwd,1\nbeta/1.png,7\n"
    )
    with pytest.raises(BadInputError) as caught:
        load_labels_csv(csv, image_root=class_tree, classes=["a", "b"])
    message = str(caught.value)
    assert "labels.csv:3: image 'alpha/missing.png' not found" in message
    assert "labels.csv:4: path '../../etc/passwd' escapes the image root" in message
    assert "labels.csv:5: label 7 out of range for 2 classes" in message
    images = load_labels_csv(csv, image_root=class_tree, classes=["a", "b"], skip_bad_images=True)
    assert len(images) == 1 and len(images.skipped) == 3


def test_check_images_lists_every_bad_file(class_tree):
    (class_tree / "alpha" / "zero.png").write_bytes(b"")
    (class_tree / "beta" / "text.png").write_text("not an image")
    write_png(class_tree / "gamma" / "dot.png", np.zeros((1, 1, 3), np.uint8))
    images = load_class_folders(class_tree)
    with pytest.raises(BadInputError) as caught:
        check_images(images, verbose=False)
    assert len(caught.value.problems) == 3
    assert "zero.png: empty file" in str(caught.value)
    checked, channels = check_images(images, skip_bad_images=True, verbose=False)
    assert len(checked) == 18 and channels == 3
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in checked.skipped) == [
        "dot.png",
        "text.png",
        "zero.png",
    ]


def test_check_images_promotes_mixed_grey_and_rgb(class_tree):
    write_png(class_tree / "alpha" / "grey.png", np.zeros((12, 12), np.uint8))
    _, channels = check_images(load_class_folders(class_tree), verbose=False)
    assert channels == 3
