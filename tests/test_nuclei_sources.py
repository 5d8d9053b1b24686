"""Synthetic nuclei, the laptrack sample, multi-source patches and the cell-size estimate."""

import numpy as np
import pytest
from scipy import ndimage

from cellkeras.data import samples
from cellkeras.data.nuclei_sources import (
    GROUP_STRIDE,
    median_diameter,
    multi_source_patches,
    parse_sources,
    rescale_sample,
)
from cellkeras.data.synthetic_nuclei import (
    NucleiFieldParams,
    nuclei_field,
    synthetic_nuclei_sample,
)
from cellkeras.detect.size import estimate_diameter


def test_synthetic_nuclei_are_deterministic_and_labels_exact():
    a = synthetic_nuclei_sample(2, (64, 64), 10.0, seed=3)
    b = synthetic_nuclei_sample(2, (64, 64), 10.0, seed=3)
    c = synthetic_nuclei_sample(2, (64, 64), 10.0, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.images.dtype == np.uint16 and a.labels.dtype == np.int32
    assert a.images.shape == a.labels.shape == (2, 64, 64) and a.pixel_size_um is None
    for image, label in zip(a.images, a.labels, strict=True):
        ids = np.unique(label[label > 0])
        assert len(ids) >= 5 and ids.tolist() == list(range(1, len(ids) + 1))
        # Every labelled nucleus is brighter than the background around the nuclei.
        ring = ndimage.binary_dilation(label > 0, iterations=4) & (label == 0)
        means = ndimage.mean(image.astype(float), label, ids)
        assert np.median(means) > 1.5 * image[ring].mean()


def test_clumping_dim_nuclei_and_settings():
    params = NucleiFieldParams(size=(96, 96), diameter=12, clump_fraction=1.0, dim_fraction=0.5,
                               read_noise=1.0, photons=50.0, unevenness=0.0)  # fmt: skip
    image, label = nuclei_field(params, seed=0)
    # Touching nuclei: some pixel of one nucleus has a 4-neighbour of another.
    right = (label[:, 1:] > 0) & (label[:, :-1] > 0) & (label[:, 1:] != label[:, :-1])
    assert right.any()
    ids = np.unique(label[label > 0])
    means = np.asarray(ndimage.mean(image.astype(float), label, ids)) - params.background
    assert means.min() < 0.45 * np.median(means)  # dim ones among them
    alone, alone_label = nuclei_field(
        NucleiFieldParams(size=(96, 96), clump_fraction=0.0, dim_fraction=0.0), seed=0
    )
    grown = ndimage.grey_dilation(alone_label, size=3)
    assert not ((alone_label > 0) & (grown != alone_label)).any()  # isolated: never touching
    with pytest.raises(ValueError, match="dim_fraction"):
        NucleiFieldParams(dim_fraction=2.0)
    with pytest.raises(ValueError, match="size"):
        NucleiFieldParams(size=(4, 64))


@pytest.mark.parametrize("diameter", [8.0, 16.0])
def test_estimated_diameter_matches_known_size(diameter):
    sample = synthetic_nuclei_sample(2, (128, 128), diameter, seed=int(diameter))
    for image, label in zip(sample.images, sample.labels, strict=True):
        truth = median_diameter(label)
        assert estimate_diameter(image) == pytest.approx(truth, rel=0.2)
    assert estimate_diameter(np.full((32, 32), 7, np.uint16)) is None


def test_laptrack_missing_file_names_path_and_make_step(tmp_path):
    with pytest.raises(samples.MissingSampleError, match=r"example_images\.tif.*make"):
        samples.laptrack_sample(tmp_path)


@pytest.mark.samples
def test_laptrack_sample_is_read_by_path():
    assert samples.laptrack_dir().is_relative_to(__import__("sys").prefix)
    sample = samples.laptrack_sample()
    assert sample.images.shape == sample.labels.shape == (6, 200, 200)
    counts = [len(np.unique(f[f > 0])) for f in sample.labels]
    assert 250 <= sum(counts) <= 300
    assert 19 <= median_diameter(sample.labels) <= 23
    assert len(sample.boxes(0)) == counts[0]


def test_multi_source_patches_pool_sources_at_one_scale():
    big = synthetic_nuclei_sample(2, (96, 96), 16.0, seed=1)
    ndev_like = synthetic_nuclei_sample(1, (96, 96), 8.0, seed=2)
    half = rescale_sample(big, 0.5)
    assert half.images.shape == (2, 48, 48) and median_diameter(half.labels) == pytest.approx(
        median_diameter(big.labels) / 2, rel=0.15
    )
    pooled = multi_source_patches(
        "ndev,synthetic", patch_size=16, frames={"synthetic": [1]},
        train_diameter=6.0, loaded={"synthetic": big, "ndev": ndev_like},
    )  # fmt: skip
    assert pooled.classes == ["background", "nucleus"]
    assert pooled.images.shape[1:] == (16, 16, 1) and pooled.images.dtype == np.uint16
    assert set(pooled.groups.tolist()) == {0, 2 * GROUP_STRIDE + 1}
    assert pooled.class_counts().min() > 0
    with pytest.raises(ValueError, match="unknown nuclei source"):
        parse_sources("ndev,stardist")
    with pytest.raises(ValueError, match="repeated"):
        parse_sources(["ndev", "ndev"])


def test_nuclei_preset_names_its_sources():
    from trainer.config import build_config

    assert build_config("nuclei").data.nuclei_sources == "ndev,laptrack,synthetic"
    assert build_config("default").data.nuclei_sources == "ndev"


def test_detect_measures_the_diameter_when_not_given():
    from cellkeras.detect.pipeline import DetectConfig, resolve_diameter

    sample = synthetic_nuclei_sample(1, (96, 96), 20.0, seed=5)
    config = DetectConfig.for_workflow("nuclei")
    resolved, estimated = resolve_diameter(sample.images[0], config)
    assert estimated and resolved.cell_diameter == pytest.approx(
        median_diameter(sample.labels), rel=0.2
    )
    given, estimated = resolve_diameter(sample.images[0], DetectConfig.for_workflow(
        "nuclei", cell_diameter=9.0))  # fmt: skip
    assert not estimated and given.cell_diameter == 9.0


def test_local_foreground_keeps_dim_nuclei_whole():
    from cellkeras.detect.boxes import BoxParams, image_foreground

    image = np.full((64, 96), 100.0, np.float32)
    yy, xx = np.mgrid[:64, :96]
    for cx, level in ((16, 4000.0), (48, 4000.0), (80, 1400.0)):  # two bright, one dim
        image[(yy - 32) ** 2 + (xx - cx) ** 2 <= 36] = level
    image += np.random.default_rng(0).normal(0, 20, image.shape)
    dim = (yy - 32) ** 2 + (xx - 80) ** 2 <= 36
    global_fg, local_fg = image_foreground(image), image_foreground(image, mode="local")
    assert global_fg[dim].mean() < 0.5 and local_fg[dim].mean() > 0.8
    assert local_fg[:, :4].sum() == 0  # plain background stays background
    with pytest.raises(ValueError, match="foreground"):
        BoxParams(foreground="adaptive")


@pytest.mark.parametrize("dim_level", [1400.0, 4000.0])
def test_auto_foreground_takes_the_rule_that_gives_nucleus_sized_cells(dim_level):
    # Textured dim nuclei: global Otsu keeps only their bright specks (fragments); bright
    # uniform nuclei: both rules find them whole. "auto" must score at least as many
    # nucleus-sized cells as the better of the two, on either image.
    from cellkeras.detect.boxes import BoxParams, heatmap_to_instances, sized_like

    rng = np.random.default_rng(1)
    image = np.full((96, 96), 100.0, np.float32)
    yy, xx = np.mgrid[:96, :96]
    centres = [(16 + 32 * (i % 3), 16 + 32 * (i // 3)) for i in range(9)]
    for k, (cx, cy) in enumerate(centres):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
        level = 4000.0 if k < 3 else dim_level
        image[disc] = level * (0.6 + 0.8 * rng.random(disc.sum()))
    image += rng.normal(0, 20, image.shape)
    heat = np.ones(image.shape, np.float32)
    base = dict(threshold="fixed", value=0.5, min_peak=0.5, extent="image", split="distance",
                min_distance=4.0, min_area=4.0, auto_diameter=12.0)  # fmt: skip
    sized = {}
    for mode in ("otsu", "local", "auto"):
        _, _, labels = heatmap_to_instances(heat, BoxParams(**base, foreground=mode), image)
        sized[mode] = sized_like(labels, 12.0)
    assert sized["auto"] == max(sized["otsu"], sized["local"]) >= 8
    if dim_level < 2000:
        assert sized["local"] > sized["otsu"]  # the dim nuclei need the local rule here


def test_frame_normalized_patches_keep_their_brightness_relative_to_the_frame():
    # A dim copy of a field gives the same frame-stretched patches as the field itself, and
    # the pipeline only maps them to [0, 1] instead of stretching each patch again.
    import dataclasses

    from cellkeras.data import make_dataset
    from cellkeras.io.images import normalize

    field = synthetic_nuclei_sample(1, (64, 64), 6.0, seed=3)
    dim = dataclasses.replace(field, images=(field.images // 4).astype(np.uint16))
    kwargs = dict(sources="synthetic", patch_size=16, train_diameter=6.0, frame_normalize=True)
    bright = multi_source_patches(loaded={"synthetic": field}, **kwargs)
    darker = multi_source_patches(loaded={"synthetic": dim}, **kwargs)
    assert bright.frame_normalized and bright.images.dtype == np.uint16
    np.testing.assert_allclose(bright.images, darker.images, atol=2 * 65535 / 1000)
    stretched = normalize(field.images[0][..., None], "frame_percentile")
    assert bright.images.max() == 65535 and stretched.max() == 1.0
    raw = multi_source_patches(loaded={"synthetic": field}, **{**kwargs, "frame_normalize": False})
    assert not raw.frame_normalized and raw.images.max() < 65535
    batch, _ = next(iter(make_dataset(bright, 16, False, 8, 1, normalization="frame_percentile")))
    np.testing.assert_allclose(batch.numpy(), bright.images[:8] / 65535.0, atol=1e-6)
    patch_stretch = normalize(bright.images[0], "percentile")
    assert np.abs(batch.numpy()[0] - patch_stretch).max() > 0.05
