"""The trainer on user data of the kinds the data layer documents (docs/DATA.md)."""

import json

import numpy as np
import pytest
import tifffile


@pytest.mark.slow
def test_channel_indices_and_a_dropped_class_through_the_trainer(tmp_path):
    from trainer.config import build_config
    from trainer.task import run

    rng = np.random.default_rng(0)
    tree = tmp_path / "tree"
    for k, name in enumerate(["a", "b"]):
        (tree / name).mkdir(parents=True)
        for i in range(8):
            stack = rng.integers(0, 20000, (4, 16, 16), dtype=np.uint16)
            stack[2] += np.uint16(20000 * k)  # channel 2 tells the classes apart
            tifffile.imwrite(tree / name / f"{i}.tif", stack, metadata={"axes": "CYX"})
    (tree / "a_empty").mkdir()  # sorts between a and b: b's label index moves from 2 to 1
    config = build_config(
        "smoke",
        {
            "data.data_dir": str(tree),
            "data.channels": "0,2",
            "data.skip_bad_images": True,
            "train.schedule": "16:1",
            "train.batch_size": 4,
            "train.model": "edge",
            "train.augment": "none",
        },
    )
    config.output_dir = str(tmp_path / "run")
    with pytest.warns(UserWarning, match="'a_empty' have no images"):
        metrics = run(config, verbose=0)
    assert metrics["classes"] == ["a", "b"]
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert [s["reason"] for s in skipped] == [
        "class 'a_empty' dropped: no images; labels now 0=a, 1=b"
    ]
    import keras

    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert model.inputs[0].shape[-1] == 2


@pytest.mark.slow
def test_auto_normalization_stretches_12_bit_data_and_the_run_folder_keeps_the_choice(
    tmp_path, capsys
):
    from cellkeras.inference.loading import load_model_for_inference
    from tests.conftest import write_png
    from trainer.config import build_config
    from trainer.task import run

    rng = np.random.default_rng(0)
    for k, name in enumerate(["a", "b"]):
        for i in range(8):
            write_png(
                tmp_path / "tree" / name / f"{i}.png",
                rng.integers(0, 600 + 600 * k, (16, 16), dtype=np.uint16),  # 12-bit camera data
            )
    config = build_config(
        "smoke",
        {
            "data.data_dir": str(tmp_path / "tree"),
            "train.schedule": "16:1",
            "train.batch_size": 4,
            "train.model": "edge",
            "train.augment": "none",
        },
    )
    assert config.data.normalization == "auto"
    config.output_dir = str(tmp_path / "run")
    run(config, verbose=0)
    assert "normalization: auto -> percentile (16 of 16 sampled images are 16-bit" in (
        capsys.readouterr().out
    )
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["normalization"] == "percentile"
    assert load_model_for_inference(tmp_path / "run")[1].normalization == "percentile"
