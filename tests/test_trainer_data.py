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
