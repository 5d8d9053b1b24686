"""Regenerates the data pictures in docs/images (README and docs/DATA.md show them).

    python scripts/make_data_figures.py [--out docs/images]

Needs the sample packages (`pip install --no-deps devolearn==0.3.0 ndev-sampledata==0.0.3`).
Runs in about 20 s on a 2-core CPU; every picture is deterministic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from cellkeras.data.gallery import draw_boxes, draw_gallery
from cellkeras.data.samples import embryo_stage_sheet, nuclei_overlay, nuclei_patches
from cellkeras.data.synthetic import generate_cells, generate_scene


def _write_rgb(path: Path, rgb) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    print(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", type=Path)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)

    cells = generate_cells(48, 96, seed=0)
    title = "cellkeras synthetic blood smears (generate_cells, 96 px, seed 0)"
    print(draw_gallery(cells, out / "synthetic_gallery.png", per_class=6, title=title))
    scene = generate_scene((512, 512), num_cells=16, seed=0)
    _write_rgb(
        out / "synthetic_scene.png", draw_boxes(scene["image"], scene["boxes"], scene["box_labels"])
    )
    _write_rgb(out / "embryo_stages.png", embryo_stage_sheet(per_stage=3, tile_side=200))
    _write_rgb(out / "nuclei_sample.png", nuclei_overlay(0, scale=2))
    patches = nuclei_patches(seed=0)
    title = "ndev nuclei patches (32 px, weak patch-level labels for the nucleus detector)"
    print(draw_gallery(patches, out / "nuclei_patches.png", per_class=8, title=title))


if __name__ == "__main__":
    main()
