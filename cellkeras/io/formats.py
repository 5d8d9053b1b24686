"""Names and signatures of the files cellkeras reads and writes, defined once for every layer.

`MODEL_FILE` is the Keras model in a trainer run folder and in each export version; the magic
bytes tell an image's format from its first bytes (`sniff_format` here, the same tests in-graph
in `cellkeras.serving.signatures`).
"""

from __future__ import annotations

MODEL_FILE = "model.keras"

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# Classic TIFF and BigTIFF, little- and big-endian.
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
BMP_MAGIC = b"BM"
GIF_MAGICS = (b"GIF87a", b"GIF89a")

IMAGE_MAGIC: dict[bytes, str] = {
    PNG_MAGIC: "png",
    JPEG_MAGIC: "jpeg",
    **dict.fromkeys(TIFF_MAGICS, "tiff"),
    BMP_MAGIC: "bmp",
    **dict.fromkeys(GIF_MAGICS, "gif"),
}


def sniff_format(data: bytes) -> str | None:
    """The image format ("png", "jpeg", "tiff", "bmp", "gif") from the file's first bytes, or None
    when it is not a known image."""
    for magic, name in IMAGE_MAGIC.items():
        if data.startswith(magic):
            return name
    return None
