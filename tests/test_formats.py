"""cellkeras.io.formats: the magic bytes and file names every layer shares."""

import cv2
import numpy as np
import pytest
from PIL import Image

from cellkeras.data.frames import _sniff_format
from cellkeras.io import images
from cellkeras.io.formats import IMAGE_MAGIC, sniff_format


def encoded(kind: str) -> bytes:
    pixels = np.full((8, 8, 3), 100, np.uint8)
    if kind == "gif":  # OpenCV writes no GIF
        import io

        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="GIF")
        return buffer.getvalue()
    return cv2.imencode({"jpeg": ".jpg", "tiff": ".tif"}.get(kind, f".{kind}"), pixels)[1].tobytes()


@pytest.mark.parametrize("kind", ["png", "jpeg", "tiff", "bmp", "gif"])
def test_sniff_format_knows_what_the_encoders_write(kind):
    assert sniff_format(encoded(kind)) == kind
    assert images.sniff_format is sniff_format  # the reader's and everyone else's are one


def test_sniff_format_big_tiff_and_unknown():
    assert sniff_format(b"II+\x00" + bytes(12)) == sniff_format(b"MM\x00+" + bytes(12)) == "tiff"
    assert sniff_format(b"not an image") is None and sniff_format(b"") is None
    assert set(IMAGE_MAGIC.values()) == {"png", "jpeg", "tiff", "bmp", "gif"}


def test_video_export_names_encoded_images_by_their_own_format():
    exts = {kind: _sniff_format(encoded(kind)) for kind in ("png", "jpeg", "tiff", "bmp", "gif")}
    assert exts == {"png": "png", "jpeg": "jpg", "tiff": "tif", "bmp": "bmp", "gif": "gif"}
    assert _sniff_format(b"???") is None
