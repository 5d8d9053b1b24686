"""The versioned SavedModel export, its serving signatures, warmup file and serve-check."""

import argparse
import functools
import json
import os
import shutil

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from cellkeras.cli import serving as export_commands
from cellkeras.io.images import decode_image
from cellkeras.serving import export as export_module
from cellkeras.serving.check import load_export, serve_check
from cellkeras.serving.export import export_model, list_versions
from cellkeras.serving.signatures import decode_image_bytes, resize_images
from cellkeras.serving.warmup import (
    parse_prediction_log,
    prediction_log_bytes,
    read_warmup_requests,
)

SIZE = (16, 12)  # height x width; not square, so a swapped axis shows
CLASSES = ["round", "spindle", "dividing"]


def tiny_model(channels: int, seed: int = 0) -> keras.Model:
    """Conv + global pooling + softmax: accepts any image size, like the real models."""
    keras.utils.set_random_seed(seed)
    images = keras.Input((None, None, channels), dtype="float32")
    x = keras.layers.Conv2D(4, 3, activation="relu")(images)
    x = keras.layers.GlobalAveragePooling2D()(x)
    probs = keras.layers.Dense(len(CLASSES), activation="softmax", dtype="float32")(x)
    return keras.Model(images, probs)


def encode(pixels: np.ndarray, ext: str, **params: int) -> bytes:
    """Encodes RGB(A) or grey pixels with OpenCV (which wants BGR order)."""
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    elif pixels.ndim == 3 and pixels.shape[-1] == 4:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA)
    flags = [v for item in params.items() for v in (getattr(cv2, item[0]), item[1])]
    ok, data = cv2.imencode(ext, pixels, flags)
    assert ok
    return data.tobytes()


def random_pixels(shape: tuple, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


IMAGES = {
    "png8_grey": lambda: encode(random_pixels((21, 17)), ".png"),
    "png8_rgb": lambda: encode(random_pixels((19, 23, 3), seed=1), ".png"),
    "png16_grey": lambda: encode(random_pixels((20, 20), np.uint16, seed=2), ".png"),
    "png16_rgb": lambda: encode(random_pixels((24, 18, 3), np.uint16, seed=3), ".png"),
    "jpeg_grey": lambda: encode(random_pixels((32, 24), seed=4), ".jpg"),
    "jpeg_rgb": lambda: encode(random_pixels((24, 32, 3), seed=5), ".jpg"),
}


def keras_reference(model: keras.Model, data: bytes, channels: int) -> np.ndarray:
    """What training sees: cellkeras' decoder, then the pipeline's antialiased resize."""
    pixels = decode_image(data, channels)
    return np.asarray(model(resize_images(pixels[None], SIZE), training=False))


@pytest.fixture(scope="module", params=[1, 3], ids=["grey_model", "rgb_model"])
def exported(request, tmp_path_factory):
    channels = request.param
    model = tiny_model(channels)
    root = tmp_path_factory.mktemp(f"export_c{channels}")
    path = export_model(
        model,
        root,
        classes=CLASSES,
        image_size=SIZE,
        channels=channels,
        metadata={"metrics": {"val_accuracy": 0.5}, "model": "tiny"},
    )
    return {"model": model, "root": root, "path": path, "channels": channels}


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported["path"]))


def test_layout_and_model_card(exported):
    path = exported["path"]
    assert path == exported["root"] / "1"
    for name in ("saved_model.pb", "variables", "model.keras", "model_card.json"):
        assert (path / name).exists(), name
    assert (path / "assets.extra" / "tf_serving_warmup_requests").is_file()
    card = json.loads((path / "model_card.json").read_text())
    assert card["classes"] == CLASSES
    assert card["channels"] == exported["channels"]
    assert card["image_size"] == list(SIZE)
    assert card["normalization"] == "range"
    assert card["version"] == 1
    assert card["metrics"] == {"val_accuracy": 0.5} and card["model"] == "tiny"
    assert set(card["signatures"]) == {"serving_default", "serving_images"}
    assert card["versions"]["tensorflow"] == tf.__version__


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_bytes_signature_matches_keras_on_training_decode(exported, loaded, kind):
    data = IMAGES[kind]()
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([data]))
    expected = keras_reference(exported["model"], data, exported["channels"])
    # JPEG too: decoded with INTEGER_ACCURATE, TensorFlow gives OpenCV's pixels exactly.
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5, rtol=0)
    assert out["probabilities"].dtype == tf.float32
    assert out["class_index"].dtype == tf.int64
    index = int(np.argmax(expected[0]))
    assert out["class_index"].numpy().tolist() == [index]
    assert out["class_name"].numpy().tolist() == [CLASSES[index].encode()]


def test_mixed_batch_of_formats_and_sizes(exported, loaded):
    datas = [make() for make in IMAGES.values()]
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(datas))
    expected = np.concatenate(
        [keras_reference(exported["model"], d, exported["channels"]) for d in datas]
    )
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5, rtol=0)
    names = [n.decode() for n in out["class_name"].numpy()]
    assert names == [CLASSES[i] for i in expected.argmax(-1)]


def test_float_signature_resizes_in_graph(exported, loaded):
    pixels = decode_image(IMAGES["png8_rgb"](), exported["channels"])
    out = loaded.signatures["serving_images"](images=tf.constant(pixels[None]))
    expected = exported["model"](resize_images(pixels[None], SIZE), training=False)
    np.testing.assert_allclose(out["probabilities"].numpy(), np.asarray(expected), atol=1e-6)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is not an image", r"image_bytes\[1\]: not a PNG, JPEG, BMP or GIF"),
        (b"", r"image_bytes\[1\]: not a PNG, JPEG, BMP or GIF"),
        (b"II*\x00" + bytes(64), r"image_bytes\[1\]: TIFF cannot be decoded.*serving_images"),
    ],
    ids=["text", "empty", "tiff"],
)
def test_undecodable_bytes_raise_a_clear_error(loaded, data, message):
    good = IMAGES["png8_grey"]()
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["serving_default"](image_bytes=tf.constant([good, data]))


def test_truncated_png_raises(loaded):
    data = IMAGES["png8_grey"]()
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_default"](image_bytes=tf.constant([data[:60]]))


# --- the in-graph decoder against cellkeras.io.images, pixel for pixel ------------------------

DECODE_CASES = {
    "png8_grey": lambda: encode(random_pixels((32, 32)), ".png"),
    "png8_rgb": lambda: encode(random_pixels((32, 32, 3)), ".png"),
    "png8_rgba": lambda: encode(random_pixels((32, 32, 4)), ".png"),
    "png16_grey": lambda: encode(random_pixels((32, 32), np.uint16), ".png"),
    "png16_rgb": lambda: encode(random_pixels((32, 32, 3), np.uint16), ".png"),
    "png16_rgba": lambda: encode(random_pixels((32, 32, 4), np.uint16), ".png"),
    "jpeg_grey": lambda: encode(random_pixels((32, 32)), ".jpg", IMWRITE_JPEG_QUALITY=80),
    "jpeg_rgb": lambda: encode(random_pixels((32, 32, 3)), ".jpg", IMWRITE_JPEG_QUALITY=80),
    "bmp_grey": lambda: encode(random_pixels((32, 32)), ".bmp"),
    "bmp_rgb": lambda: encode(random_pixels((32, 32, 3)), ".bmp"),
    "gif_rgb": lambda: encode(random_pixels((32, 32, 3)), ".gif"),
}


@functools.cache
def graph_decoder(channels: int) -> tf.types.experimental.GenericFunction:
    """In a tf.function, as in the SavedModel (graph rewrites must not change a pixel either);
    traced once per channel count to keep the tests fast."""
    return tf.function(
        lambda data: decode_image_bytes(data, channels),
        input_signature=[tf.TensorSpec([], tf.string)],
        autograph=False,
    )


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", sorted(DECODE_CASES))
def test_in_graph_decode_equals_training_decode(kind, channels):
    data = DECODE_CASES[kind]()
    expected = decode_image(data, channels)
    got = graph_decoder(channels)(tf.constant(data)).numpy()
    assert got.shape == expected.shape and got.dtype == np.float32
    # Bit-identical, luminance included (one exact formula, see cellkeras.io.images).
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_grey_in_graph_equals_training_grey_bit_for_bit(dtype):
    from cellkeras.io.images import select_channels
    from cellkeras.serving.signatures import _luminance

    rgb = random_pixels((256, 256, 3), dtype, seed=5)  # 65,536 pixels of every weight mix
    expected = select_channels(rgb, 1)
    np.testing.assert_array_equal(tf.function(_luminance)(tf.constant(rgb)).numpy(), expected)
    np.testing.assert_array_equal(
        graph_decoder(1)(tf.constant(encode(rgb, ".png"))).numpy(),
        decode_image(encode(rgb, ".png"), 1),
    )


@pytest.mark.parametrize("normalization", ["percentile", "frame_percentile"])
def test_in_graph_percentile_normalization(normalization):
    # A request image is its own frame: "frame_percentile" stretches it as "percentile" does.
    data = DECODE_CASES["png16_rgb"]()
    expected = decode_image(data, 3, normalization="percentile")
    got = decode_image_bytes(tf.constant(data), 3, normalization=normalization).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


# --- versions and atomicity ------------------------------------------------------------------------


def test_versions_increment_and_explicit_versions(tmp_path):
    model = tiny_model(1)
    kw = {"classes": CLASSES, "image_size": 8, "channels": 1}
    assert export_model(model, tmp_path, **kw).name == "1"
    assert export_model(model, tmp_path, **kw, version=7).name == "7"
    assert export_model(model, tmp_path, **kw).name == "8"
    assert list_versions(tmp_path) == [1, 7, 8]
    with pytest.raises(FileExistsError):
        export_model(model, tmp_path, **kw, version=7)
    assert sorted(os.listdir(tmp_path)) == ["1", "7", "8"]
    with pytest.raises(ValueError, match="may not set"):
        export_model(model, tmp_path, **kw, metadata={"classes": ["x"]})


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full (injected)")

    # Fails after the SavedModel and model.keras are written, before the rename.
    monkeypatch.setattr(export_module, "write_warmup_file", broken)
    with pytest.raises(RuntimeError, match="injected"):
        export_model(tiny_model(3), tmp_path / "exp", classes=CLASSES, image_size=8, channels=3)
    assert os.listdir(tmp_path / "exp") == []


def test_concurrent_export_takes_the_next_version(tmp_path, monkeypatch):
    real_write_card = export_module._write_card

    def write_card_while_another_export_lands(path, card):
        # Another process publishes version 1 between our choice of number and our rename.
        (tmp_path / "1").mkdir(exist_ok=True)
        (tmp_path / "1" / "saved_model.pb").write_bytes(b"other")
        real_write_card(path, card)

    monkeypatch.setattr(export_module, "_write_card", write_card_while_another_export_lands)
    path = export_model(tiny_model(1), tmp_path, classes=CLASSES, image_size=8, channels=1)
    assert path.name == "2"
    assert json.loads((path / "model_card.json").read_text())["version"] == 2
    assert (tmp_path / "1" / "saved_model.pb").read_bytes() == b"other"
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_a_build_folder_named_like_another_containers_survives(tmp_path):
    # In containers every process is PID 1: another container's export into the same volume
    # builds in a folder named as ours would be. Ours must not clear it.
    theirs = tmp_path / f".tmp-1-{os.getpid()}"
    (theirs / "variables").mkdir(parents=True)
    (theirs / "saved_model.pb").write_bytes(b"half-built by another process")
    path = export_model(tiny_model(1), tmp_path, classes=CLASSES, image_size=8, channels=1)
    assert path == tmp_path / "1" and (path / "saved_model.pb").is_file()
    assert (theirs / "saved_model.pb").read_bytes() == b"half-built by another process"
    assert sorted(os.listdir(tmp_path)) == [theirs.name, "1"]  # nothing else of ours left
    probe = tmp_path.parent / f"{tmp_path.name}-probe"
    probe.mkdir()  # as readable as any folder made here, not mkdtemp's private 0700
    assert (path.stat().st_mode & 0o777) == (probe.stat().st_mode & 0o777)


def test_unversioned_export_writes_the_saved_model_at_the_folder(tmp_path):
    target = tmp_path / "serving_model_dir"
    kw = {"classes": CLASSES, "image_size": 8, "channels": 1}
    assert export_model(tiny_model(1), target, versioned=False, **kw) == target
    assert (target / "saved_model.pb").is_file() and (target / "model.keras").is_file()
    assert json.loads((target / "model_card.json").read_text())["version"] is None
    assert list_versions(target) == []
    tf.saved_model.load(str(target))
    # A rerun replaces the export whole; nothing temporary stays beside it.
    export_model(tiny_model(1, seed=1), target, versioned=False, **kw, metadata={"model": "b"})
    assert json.loads((target / "model_card.json").read_text())["model"] == "b"
    assert os.listdir(tmp_path) == ["serving_model_dir"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an export"):
        export_model(tiny_model(1), other, versioned=False, **kw)
    assert os.listdir(other) == ["todo.txt"]
    with pytest.raises(ValueError, match="versioned"):
        export_model(tiny_model(1), target, versioned=False, version=2, **kw)


# --- warmup records --------------------------------------------------------------------------------


def test_warmup_records_decode_and_replay(exported, loaded):
    channels = exported["channels"]
    requests = read_warmup_requests(exported["path"] / "assets.extra/tf_serving_warmup_requests")
    assert [r.signature_name for r in requests] == ["serving_default", "serving_images"]
    (png,) = requests[0].inputs["image_bytes"]
    grey = decode_image(png, channels)
    assert grey.shape == (*SIZE, channels) and np.all(grey == np.float32(128 / 255))
    assert requests[1].inputs["images"].shape == (1, *SIZE, channels)
    for request in requests:
        fn = loaded.signatures[request.signature_name]
        out = fn(**{k: tf.constant(v) for k, v in request.inputs.items()})
        assert out["probabilities"].shape == (1, len(CLASSES))


def test_prediction_log_round_trip_and_official_protos():
    from tensorflow_serving.apis import prediction_log_pb2

    data = prediction_log_bytes("serving_default", {"image_bytes": np.array([b"\x00abc"])})
    request = parse_prediction_log(data)
    assert request.signature_name == "serving_default"
    assert request.inputs["image_bytes"].tolist() == [b"\x00abc"]
    log = prediction_log_pb2.PredictionLog.FromString(data)
    assert log.WhichOneof("log_type") == "predict_log"
    assert log.predict_log.request.model_spec.signature_name == "serving_default"
    assert log.predict_log.request.model_spec.name == ""  # the server fills in its model
    tensor = log.predict_log.request.inputs["image_bytes"]
    assert tf.make_ndarray(tensor).tolist() == [b"\x00abc"]
    # The same bytes the earlier hand-written encoder produced, so older exports read back alike.
    assert data.hex() == (
        "32340a320a111a0f73657276696e675f64656661756c74121d0a0b696d6167655f6279746573120e08071204"
        "12020801420400616263"
    )


def test_parse_prediction_log_rejects_other_logs_and_garbage():
    from tensorflow_serving.apis import prediction_log_pb2

    classify = prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog())
    with pytest.raises(ValueError, match="classify_log"):
        parse_prediction_log(classify.SerializeToString())
    with pytest.raises(ValueError, match="malformed"):
        parse_prediction_log(b"\xff\xff")
    # No signature name means TF Serving's default signature.
    empty = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog())
    assert parse_prediction_log(empty.SerializeToString()).signature_name == "serving_default"


# --- loading and serve-check -----------------------------------------------------------------------


def test_load_export_takes_the_highest_version(exported):
    export = load_export(exported["root"])
    assert export.version == 1 and export.card["classes"] == CLASSES
    assert load_export(exported["path"]).version_dir == exported["path"]
    assert "serving_images" in export.signatures


def run_serve_check(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    export_commands.add_command(parser.add_subparsers())
    args = parser.parse_args(["serve-check", *argv])
    return args.func(args)


def test_serve_check_passes_and_prints_the_requests(exported, capsys):
    assert run_serve_check(str(exported["root"]), "--no_saved_model_cli") == 0
    out = capsys.readouterr().out
    assert (
        'curl -d \'{"instances": [{"image_bytes": {"b64": "\'$(base64 -w0 cell.png)\'"}}]}\'' in out
    )
    assert "http://localhost:8501/v1/models/cellkeras:predict" in out
    assert "-t tensorflow/serving" in out and f"source={exported['root'].resolve()}" in out
    assert out.rstrip().endswith("OK")


def test_serve_check_with_a_user_image(exported, tmp_path):
    image = tmp_path / "cell.jpg"
    image.write_bytes(IMAGES["jpeg_rgb"]())
    report = serve_check(exported["path"], image=image, use_saved_model_cli=False)
    assert report["ok"], report["checks"]
    assert report["max_abs_diff"] < 1e-5


def test_serve_check_fails_on_a_broken_export(exported, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(exported["path"], broken / "1")
    (broken / "1" / "assets.extra" / "tf_serving_warmup_requests").unlink()
    assert run_serve_check(str(broken), "--no_saved_model_cli") == 1
    out = capsys.readouterr().out
    assert "[FAIL] layout" in out and "[FAIL] warmup" in out and out.rstrip().endswith("FAILED")


@pytest.mark.slow
@pytest.mark.parametrize("exported", [3], indirect=True)  # one model: the subprocess costs ~15 s
def test_serve_check_with_saved_model_cli(exported):
    report = serve_check(exported["root"])
    assert report["ok"], report["checks"]
    if "saved_model_cli" in report:
        assert "inputs['image_bytes']" in report["saved_model_cli"]
        assert "DT_STRING" in report["saved_model_cli"]
