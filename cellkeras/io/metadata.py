"""The physical pixel size an image file records: OME-TIFF, ImageJ TIFF or TIFF resolution tags.

```
pixel_size("frame.ome.tif")      # PixelSize(um=0.619, source="OME-TIFF PhysicalSizeX")
pixel_size("cells.png")          # None: the format has no calibration
```

Where each reader puts it:

* OME-TIFF: `Pixels/@PhysicalSizeX` in the OME-XML description, in `PhysicalSizeXUnit`
  (µm when absent, as the OME schema says);
* ImageJ TIFF: `XResolution` pixels per `unit`, the unit in ImageJ's description
  (`unit=micron`; Fiji writes "micron", "um" or "\\u00B5m");
* other TIFFs: `XResolution` with `ResolutionUnit` centimetre. Inch resolutions are not read:
  72, 96 or 300 dpi is what image editors and screenshots write, not a microscope's scale.
"""

from __future__ import annotations

import dataclasses
import math
import xml.etree.ElementTree as ElementTree
from pathlib import Path

# Micrometres per unit, for the unit names OME, ImageJ and Fiji write.
_UNITS_UM = {
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "\\u00b5m": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "å": 1e-4,
    "angstrom": 1e-4,
}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class MetadataError(ValueError):
    """A file whose calibration metadata is present but unusable, naming the file and field."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source


@dataclasses.dataclass(frozen=True)
class PixelSize:
    """Micrometres per pixel along x, and where the value came from."""

    um: float
    source: str


def unit_to_um(unit: str) -> float | None:
    """Micrometres per `unit` ("micron", "nm", ...), or None for an unknown or empty unit."""
    return _UNITS_UM.get(unit.strip().lower())


def _checked(value: float, field: str, source: str) -> float:
    if not math.isfinite(value) or value <= 0:
        raise MetadataError(source, f"{field} is {value}, not a positive pixel size")
    return value


def _ome_pixel_size(xml: str, source: str) -> PixelSize | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as err:
        raise MetadataError(source, f"the OME-XML description does not parse ({err})") from None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    raw = pixels.get("PhysicalSizeX", "")
    try:
        value = float(raw)
    except ValueError:
        raise MetadataError(source, f"OME PhysicalSizeX {raw!r} is not a number") from None
    unit = pixels.get("PhysicalSizeXUnit", "µm")
    scale = unit_to_um(unit)
    if scale is None:
        raise MetadataError(source, f"OME PhysicalSizeXUnit {unit!r} is not a length unit")
    return PixelSize(_checked(value * scale, "OME PhysicalSizeX", source), "OME-TIFF PhysicalSizeX")


def _resolution(page) -> float | None:
    """Pixels per resolution unit along x, or None when the tag is absent."""
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    numerator, denominator = tag.value
    return numerator / denominator if denominator else None


def pixel_size(path: str | Path) -> PixelSize | None:
    """The pixel size an image file records, or None when it records none.

    Only TIFFs (OME, ImageJ or plain with centimetre resolution) carry one; any other file,
    and a TIFF without calibration (ImageJ's uncalibrated default, resolution 1 per inch or no
    unit), gives None.

    Raises:
        MetadataError: naming the file and the field, for calibration that is present but
            unusable (OME-XML that does not parse, a non-positive size, an unknown unit).
        OSError: the file cannot be read.
    """
    import tifffile

    path = Path(path)
    with open(path, "rb") as handle:
        if handle.read(4) not in _TIFF_MAGIC:
            return None
    source = str(path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        if tif.is_ome and tif.ome_metadata:
            found = _ome_pixel_size(tif.ome_metadata, source)
            if found is not None:
                return found
        per_unit = _resolution(page)
        if tif.is_imagej:
            unit = (tif.imagej_metadata or {}).get("unit", "")
            scale = unit_to_um(str(unit)) if unit else None
            if scale is None or per_unit is None:
                return None
            size = _checked(scale / per_unit, "ImageJ XResolution", source)
            return PixelSize(size, "ImageJ metadata")
        unit_tag = page.tags.get("ResolutionUnit")
        if per_unit is None or unit_tag is None or int(unit_tag.value) != 3:  # 3: centimetre
            return None
        return PixelSize(_checked(1e4 / per_unit, "XResolution", source), "TIFF resolution tags")
