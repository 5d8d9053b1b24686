"""cellkeras.io.display: one rule set for every image cellkeras shows."""

import numpy as np
import pytest

from cellkeras.io.display import DISPLAY_PERCENTILES, display_range, to_display_rgb


def ramp(dtype, top, size=1000):
    return np.linspace(0, top, size).astype(dtype).reshape(10, size // 10)


def test_uint8_is_shown_as_it_is():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    out = to_display_rgb(rgb)
    np.testing.assert_array_equal(out, rgb)
    assert out.dtype == np.uint8 and out.flags.c_contiguous


def test_unit_floats_are_multiplied_by_255_and_rounded():
    out = to_display_rgb(np.array([[0.0, 0.5, 1.0, 0.2]], np.float32))
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255, 51])


def test_bool_is_black_and_white():
    np.testing.assert_array_equal(to_display_rgb(np.array([[True, False]]))[0, :, 0], [255, 0])


def test_uint16_is_stretched_between_the_display_percentiles():
    image = ramp(np.uint16, 4095)  # 12-bit data in a 16-bit file
    image[0, 0] = 65535  # one hot pixel must not darken the rest
    out = to_display_rgb(image)
    low, high = np.percentile(image.astype(np.float32), DISPLAY_PERCENTILES)
    assert out.min() == 0 and out.max() == 255
    mid = image.astype(np.float32) == image.flat[500]
    assert out[..., 0][mid][0] == round((image.flat[500] - low) / (high - low) * 255)
    assert np.mean(out[..., 0] == 255) < 0.01  # only the top 0.2 % saturate


def test_floats_beyond_unit_range_are_stretched_not_clipped():
    out = to_display_rgb(np.linspace(-3, 7, 1000, dtype=np.float32).reshape(10, 100))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert 120 <= out[5, 0, 0] <= 135  # the middle stays mid-grey


def test_range_scaling_uses_the_type_maximum_and_clips_floats():
    out = to_display_rgb(np.array([[0, 32768, 65535]], np.uint16), scaling="range")
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])
    out = to_display_rgb(np.array([[-0.2, 0.5, 1.3]], np.float32), scaling="range")
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])


def test_percentile_scaling_stretches_uint8_too():
    image = np.array([[100, 110, 120, 130]], np.uint8)
    out = to_display_rgb(image, scaling="percentile")
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255


def test_value_range_overrides_scaling():
    image = np.array([[100, 200, 300]], np.uint16)
    for scaling in ("auto", "range", "percentile"):
        out = to_display_rgb(image, scaling, value_range=(100, 300))
        np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])


def test_nan_is_the_low_end():
    out = to_display_rgb(np.array([[np.nan, 0.0, 1.0]], np.float32))
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 255])


def test_channel_rules():
    grey = to_display_rgb(np.array([[0.0, 1.0]]))
    assert grey.shape == (1, 2, 3) and np.all(grey[..., 0] == grey[..., 2])
    assert to_display_rgb(np.zeros((2, 2, 1), np.uint8)).shape == (2, 2, 3)
    rgba = np.array([[[10, 20, 30, 0]]], np.uint8)
    np.testing.assert_array_equal(to_display_rgb(rgba), [[[10, 20, 30]]])  # alpha dropped
    for channels in (2, 5):  # a microscopy stack: its first channel as grey
        stack = np.arange(channels, dtype=np.uint8)[None, None].repeat(2, axis=1) + 40
        np.testing.assert_array_equal(to_display_rgb(stack), np.full((1, 2, 3), 40))


def test_a_batch_shares_one_range():
    batch = np.stack([np.full((2, 2, 1), 100, np.uint16), np.full((2, 2, 1), 300, np.uint16)])
    out = to_display_rgb(batch)
    assert out.shape == (2, 2, 2, 3)
    assert out[0].max() == 0 and out[1].min() == 255  # the dim image stays dim


def test_display_range_and_bad_scaling():
    values = np.arange(1001, dtype=np.float32)
    assert display_range(values) == pytest.approx((5.0, 998.0))
    assert display_range(np.array([np.nan])) == (0.0, 1.0)
    with pytest.raises(ValueError, match="scaling"):
        to_display_rgb(values, scaling="log")
