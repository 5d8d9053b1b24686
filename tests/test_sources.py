"""Class-folder trees, CSV label files and the up-front image check."""

import numpy as np
import pytest

from cellkeras.data import BadInputError, check_images, load_class_folders, load_labels_csv
from cellkeras.data.imageset import ImageSet
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
    with pytest.warns(UserWarning, match="'delta' have no images"):
        images = load_class_folders(class_tree, skip_bad_images=True)
    assert images.classes == ["alpha", "beta", "gamma"]
    assert images.dropped_classes == ["delta"]
    assert [why for _, why in images.skipped] == [
        "class 'delta' dropped: no images; labels now 0=alpha, 1=beta, 2=gamma"
    ]


def test_dropping_a_class_in_the_middle_says_the_labels_moved(class_tree):
    (class_tree / "beta_empty").mkdir()
    with pytest.warns(UserWarning, match=r"'beta_empty'.*now 0=alpha, 1=beta, 2=gamma"):
        images = load_class_folders(class_tree, skip_bad_images=True)
    assert images.classes == ["alpha", "beta", "gamma"]
    assert images.class_counts().tolist() == [6, 6, 6]
    assert images.skipped[0][0].endswith("beta_empty") and "dropped" in images.skipped[0][1]


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


# --- ordered images: the frame manifest and the CSV frame column -------------------------------


def test_frame_manifest_orders_a_class_tree(class_tree):
    rows = ["filename,sequence,frame"]
    for k, name in enumerate(["alpha", "beta", "gamma"]):
        rows += [f"{name}/{i}.png,clip,{k * 6 + i}" for i in range(6)]
    rows.append("gamma/deleted_by_hand.png,clip,99")  # files that are gone are ignored
    (class_tree / "frames.csv").write_text("\n".join(rows) + "\n")
    images = load_class_folders(class_tree)
    frames = {p.split("tree/")[1]: f for p, f in zip(images.paths, images.order, strict=True)}
    assert frames["beta/2.png"] == 8 and frames["gamma/5.png"] == 17
    assert set(images.sequence) == {"clip"}

    write_png(class_tree / "alpha" / "extra.png", np.zeros((9, 9, 3), np.uint8))
    with pytest.raises(BadInputError, match="extra.png: not listed in frames.csv"):
        load_class_folders(class_tree)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("filename,frame\nalpha/0.png,1\n", "missing: sequence"),
        ("filename,sequence,frame\nalpha/0.png,clip,x\n", "frames.csv:2: frame 'x'"),
        ("filename,sequence,frame\na.png,c,1\na.png,c,2\n", "frames.csv:3: 'a.png' is listed"),
    ],
)
def test_bad_frame_manifest_rows_are_named(class_tree, content, message):
    (class_tree / "frames.csv").write_text(content)
    with pytest.raises(BadInputError, match=message):
        load_class_folders(class_tree)


def test_csv_frame_and_sequence_columns(class_tree):
    csv = class_tree / "labels.csv"
    csv.write_text(
        "filename,label,frame,sequence\nalpha/0.png,alpha,3,a\nbeta/1.png,beta,4,a\n"
        "gamma/2.png,gamma,0,b\n"
    )
    images = load_labels_csv(csv)
    assert images.order.tolist() == [3, 4, 0] and images.sequence.tolist() == ["a", "a", "b"]
    csv.write_text("filename,label,frame\nalpha/0.png,alpha,3\nbeta/1.png,beta,\n")
    with pytest.raises(BadInputError, match="labels.csv:3: the frame column is empty"):
        load_labels_csv(csv)
    csv.write_text("filename,label\nalpha/0.png,alpha\n")
    assert load_labels_csv(csv).order is None


# --- channel indices and normalization checks up front -----------------------------------------


def test_channel_indices_as_a_string_through_open_source_and_check_images(tmp_path):
    import tifffile

    from cellkeras.data.sources import open_source

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for i in range(2):
            (tmp_path / "tree" / name).mkdir(parents=True, exist_ok=True)
            stack = rng.integers(0, 65535, (4, 12, 12), dtype=np.uint16)
            tifffile.imwrite(tmp_path / "tree" / name / f"{i}.tif", stack, metadata={"axes": "CYX"})
    images = open_source(data_dir=str(tmp_path / "tree"), channels="0,2")
    assert check_images(images, "0,2", verbose=False)[1] == 2
    assert check_images(images, "3,", verbose=False)[1] == 1
    with pytest.raises(BadInputError, match="channel indices \\[5\\] do not exist"):
        check_images(images, "0,5", verbose=False)
    with pytest.raises(ValueError, match="'0;2' is neither a count"):
        check_images(images, "0;2", verbose=False)
    synthetic = open_source(num_images=8, image_size=16, channels="0,2")
    assert check_images(synthetic, "0,2", verbose=False)[1] == 2


def test_check_images_finds_what_normalization_would_refuse(tmp_path):
    import tifffile

    for i, top in enumerate((0.5, 900.0)):
        (tmp_path / "t" / "a").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(tmp_path / "t" / "a" / f"{i}.tif", np.full((9, 9), top, np.float32))
    images = load_class_folders(tmp_path / "t")
    assert check_images(images, verbose=False)[1] == 1  # without a normalization: no check
    with pytest.raises(BadInputError, match="1.tif: float pixels span 900 to 900"):
        check_images(images, verbose=False, normalization="range")
    assert len(check_images(images, verbose=False, normalization="percentile")[0]) == 2


def test_check_images_warns_about_12_bit_data_under_range(tmp_path):
    import warnings

    rng = np.random.default_rng(0)
    for cls, top in (("a", 1200), ("b", 4000)):  # 12-bit camera data in 16-bit files
        for i in range(3):
            write_png(tmp_path / "dim" / cls / f"{i}.png", rng.integers(0, top, (9, 9), np.uint16))
            write_png(
                tmp_path / "full" / cls / f"{i}.png", rng.integers(0, 60000, (9, 9), np.uint16)
            )
    dim = load_class_folders(tmp_path / "dim")
    with pytest.warns(
        UserWarning, match=r"at most 6\.1% of their range.*--normalization=percentile"
    ):
        check_images(dim, verbose=False, normalization="range")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_images(dim, verbose=False, normalization="percentile")
        check_images(load_class_folders(tmp_path / "full"), verbose=False, normalization="range")


def test_auto_normalization_stretches_dim_16_bit_images_only(tmp_path):
    from cellkeras.data.dim_images import choose_normalization

    rng = np.random.default_rng(1)
    for i in range(4):
        write_png(tmp_path / "dim" / "a" / f"{i}.png", rng.integers(0, 1200, (9, 9), np.uint16))
        write_png(tmp_path / "full" / "a" / f"{i}.png", rng.integers(0, 60000, (9, 9), np.uint16))
        write_png(tmp_path / "bytes" / "a" / f"{i}.png", rng.integers(0, 40, (9, 9), np.uint8))
    chosen, why = choose_normalization(load_class_folders(tmp_path / "dim"))
    assert chosen == "percentile" and "4 of 4 sampled images are 16-bit" in why and "1.8%" in why
    assert choose_normalization(load_class_folders(tmp_path / "full"))[0] == "range"
    # Dim 8-bit data is left alone: the rule is for 12-bit data in 16-bit files.
    assert choose_normalization(load_class_folders(tmp_path / "bytes"))[0] == "range"
    in_memory = ImageSet(
        images=rng.integers(0, 900, (3, 9, 9, 1), np.uint16),
        labels=np.zeros(3, np.int64),
        classes=["a"],
    )
    assert choose_normalization(in_memory)[0] == "percentile"
    # Workers holding shares of the files decide on their summed counts, as one process would:
    # a dim share among mostly bright ones is stretched no more than it would be alone.
    dim = load_class_folders(tmp_path / "dim")
    assert choose_normalization(dim, counts=(8, 8, 4))[0] == "range"
    assert choose_normalization(dim, counts=(8, 8, 0))[0] == "percentile"
