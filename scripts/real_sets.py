"""Real labelled cell-image sets for benchmarks, built from packaged samples as a user would.

Every set is a class-folder tree `ROOT/{TRAIN,TEST}/<class>/<image>` with a frame manifest
(`ROOT/frames.csv`) at its top, passed to the trainer as `--data_dir=ROOT`: the trainer takes
validation out of TRAIN by time blocks and scores TEST once at the end. TEST is a contiguous
time block of every class, with guard frames dropped on both sides, so near-copies of test
frames never reach training.

Sets (see `SETS`):
- `embryo8`, `embryo6`, `embryo4`: the devolearn C. elegans embryo time-lapse cut into stages at
  three granularities and with different boundaries, through the documented route
  (`cellkeras video-to-folders`), 188x128 RGB frames (the video's aspect).
- `ndev_nuclei`, `laptrack_nuclei`: nucleus-vs-background patches (32 px, 16-bit grey) from the
  ndev scratch assay and the laptrack time-lapse; the last frames are the test block.

`--cut` picks where each class's test block sits (`end`, `start` or `middle` of its time range),
so a benchmark can look at more than one cut of the same data.

    python scripts/real_sets.py embryo6 --cut end --out /tmp/sets   # prints the tree's path
    python scripts/real_sets.py embryo6 --cut end --brightness      # and each block's brightness
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from cellkeras.data.frames import MANIFEST_COLUMNS, MANIFEST_NAME, write_class_folders
from cellkeras.data.samples import (
    EMBRYO_STAGES,
    NucleiSample,
    embryo_video_path,
    nuclei_patches,
    nuclei_sample,
)

DEFAULT_CACHE = Path("runs/real_sets")
CUTS = ("end", "start", "middle")
TEST_FRACTION = 0.25
GUARD_FRAMES = 2  # frames dropped on each side of a test block (neighbours are near-copies)
EMBRYO_MAX_SIDE = 188  # 752x512 frames -> 188x128, as the "real set" used

# Stage frame ranges (inclusive). embryo8 is the sample's own cut (cellkeras.data.samples);
# embryo6 merges the cleavage and comma/fold stages and moves every boundary into the
# transition frames the 8-stage cut leaves out; embryo4 is the coarsest developmental reading.
EMBRYO_CUTS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "embryo8": EMBRYO_STAGES,
    "embryo6": (
        ("cleavage", 0, 44),
        ("early_gastrula", 50, 98),
        ("gastrula", 104, 188),
        ("late_gastrula", 194, 244),
        ("bean", 250, 302),
        ("comma_fold", 310, 387),
    ),
    "embryo4": (
        ("cleavage", 0, 44),
        ("gastrulation", 52, 236),
        ("bean", 252, 296),
        ("elongation", 312, 387),
    ),
}
NUCLEI_SETS = ("ndev_nuclei", "laptrack_nuclei")
SETS = tuple(EMBRYO_CUTS) + NUCLEI_SETS
LAPTRACK_DIR = Path(sys.prefix) / "share" / "cellkeras" / "laptrack"


def test_block(count: int, cut: str) -> tuple[int, int]:
    """The half-open range of positions, among `count` time-ordered frames, held out for test."""
    size = max(1, round(count * TEST_FRACTION))
    start = {"end": count - size, "start": 0, "middle": (count - size) // 2}[cut]
    return start, start + size


def read_manifest(root: Path) -> list[tuple[str, str, float]]:
    with (root / MANIFEST_NAME).open(newline="") as handle:
        return [(r["filename"], r["sequence"], float(r["frame"])) for r in csv.DictReader(handle)]


def split_tree(source: Path, out: Path, cut: str) -> Path:
    """Moves a manifest tree `source/<class>/...` into `out/{TRAIN,TEST}/<class>/...`."""
    rows = read_manifest(source)
    by_class: dict[str, list[tuple[str, str, float]]] = {}
    for row in rows:
        by_class.setdefault(row[0].split("/")[0], []).append(row)
    manifest = []
    for members in by_class.values():
        members.sort(key=lambda r: (r[1], r[2]))
        start, stop = test_block(len(members), cut)
        for k, (name, sequence, frame) in enumerate(members):
            if start <= k < stop:
                split = "TEST"
            elif start - GUARD_FRAMES <= k < stop + GUARD_FRAMES:
                continue  # a guard frame: a near-copy of a test frame
            else:
                split = "TRAIN"
            target = out / split / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source / name, target)
            manifest.append((f"{split}/{name}", sequence, frame))
    with (out / MANIFEST_NAME).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(manifest)
    return out


def _embryo_frames(name: str, work: Path) -> Path:
    from cellkeras.cli import main as cellkeras_main

    segments = ",".join(f"{c}={a}f:{b + 1}f" for c, a, b in EMBRYO_CUTS[name])
    frames = work / "frames"
    argv = ["video-to-folders", str(embryo_video_path()), "--segments", segments]
    argv += ["--out", str(frames), "--max_side", str(EMBRYO_MAX_SIDE), "--channels", "3"]
    if cellkeras_main(argv) != 0:
        raise RuntimeError(f"cellkeras video-to-folders failed for {name}")
    return frames


def laptrack_sample() -> NucleiSample:
    """The laptrack example time-lapse (6 frames of 200x200) that `make test` installs."""
    import tifffile

    images, labels = (LAPTRACK_DIR / f for f in ("example_images.tif", "example_label.tif"))
    if not images.is_file() or not labels.is_file():
        raise FileNotFoundError(f"{LAPTRACK_DIR} lacks the laptrack sample; run `make test` once")
    return NucleiSample(
        images=tifffile.imread(images).astype(np.uint16),
        labels=tifffile.imread(labels).astype(np.int32),
        pixel_size_um=float("nan"),
    )


def _nuclei_patch_frames(name: str, work: Path) -> Path:
    """Patches in time order: the manifest's frame is the patch's rank (frame, then raster)."""
    sample = nuclei_sample() if name == "ndev_nuclei" else laptrack_sample()
    patches = nuclei_patches(sample=sample, patch_size=32)
    patches.order = np.arange(len(patches), dtype=float)
    patches.sequence = np.array([name] * len(patches), dtype=object)
    return write_class_folders(patches, work / "frames", prefix=name)


def _split_nuclei_by_frame(source: Path, out: Path, name: str) -> Path:
    """Test = the last frames (a quarter of them), one guard frame before; the rest trains."""
    sample = nuclei_sample() if name == "ndev_nuclei" else laptrack_sample()
    groups = nuclei_patches(sample=sample, patch_size=32).groups
    frames = sorted(set(groups.tolist()))
    first_test = frames[test_block(len(frames), "end")[0]]
    manifest = []
    for filename, sequence, rank in read_manifest(source):
        frame = groups[int(rank)]
        if frame == first_test - 1:
            continue
        split = "TEST" if frame >= first_test else "TRAIN"
        target = out / split / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source / filename, target)
        manifest.append((f"{split}/{filename}", sequence, rank))
    with (out / MANIFEST_NAME).open("w", newline="") as handle:
        csv.writer(handle).writerows([MANIFEST_COLUMNS, *manifest])
    return out


def build(name: str, cut: str = "end", cache: Path = DEFAULT_CACHE) -> Path:
    """The tree of set `name` with its test block at `cut`; built once, then reused."""
    if name not in SETS:
        raise ValueError(f"unknown set {name!r} (known: {', '.join(SETS)})")
    if cut not in CUTS:
        raise ValueError(f"unknown cut {cut!r} (known: {', '.join(CUTS)})")
    # Nuclei sets are cut by frame, always at the end: there are too few frames for more cuts.
    root = Path(cache) / (name if name in NUCLEI_SETS else f"{name}-{cut}")
    if (root / MANIFEST_NAME).is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as work:
        work = Path(work)
        staged = work / "tree"
        if name in NUCLEI_SETS:
            _split_nuclei_by_frame(_nuclei_patch_frames(name, work), staged, name)
        else:
            split_tree(_embryo_frames(name, work), staged, cut)
        try:
            staged.rename(root)
        except OSError:
            if not (root / MANIFEST_NAME).is_file():
                raise
            # Another bench process built the same tree meanwhile: the trees are identical.
    return root


def split_counts(root: Path) -> dict[str, Counter]:
    """`{split: Counter(class -> images)}` of a built tree."""
    counts: dict[str, Counter] = {}
    for filename, _, _ in read_manifest(root):
        split, cls = filename.split("/")[:2]
        counts.setdefault(split, Counter())[cls] += 1
    return counts


def mean_brightness(image: np.ndarray) -> float:
    return float(image.mean())


def nuclei_count(image: np.ndarray) -> float:
    """Nuclei in an embryo frame: the classical Otsu + watershed on its green (nuclear) channel,
    at the frames' 188x128 size (early nuclei ~10 px, late ones ~5 px across)."""
    from cellkeras.detect.baseline import otsu_watershed

    grey = image[..., 1] if image.ndim == 3 and image.shape[-1] >= 3 else image
    return float(len(otsu_watershed(grey, sigma=1.0, min_distance=3)[0]))


def measure_frames(root: Path, measure=mean_brightness) -> list[tuple[str, str, str, float, float]]:
    """`(sequence, split, class, frame, measure(image))` for every frame of a built tree, in
    time order."""
    from PIL import Image

    rows = []
    for filename, sequence, frame in sorted(read_manifest(root), key=lambda r: (r[1], r[2])):
        split, cls = filename.split("/")[:2]
        image = np.asarray(Image.open(root / filename), dtype=np.float64)
        rows.append((sequence, split, cls, frame, measure(image)))
    return rows


def by_block(frames: list[tuple[str, str, str, float, float]]) -> list[tuple]:
    """`(split, class, first frame, last frame, lowest, highest value)` per time block (a run
    of one sequence's frames in one split and class) of `measure_frames`' rows: whether a
    measure drifts with time, a cue a classifier can learn or must extrapolate."""
    rows: list[list] = []
    for sequence, split, cls, frame, value in frames:
        if not rows or rows[-1][:3] != [sequence, split, cls]:
            rows.append([sequence, split, cls, frame, frame, value, value])
        row = rows[-1]
        row[4], row[5], row[6] = frame, min(row[5], value), max(row[6], value)
    return [tuple(row[1:]) for row in rows]


def plot_by_frame(frames, title: str, ylabel: str, path: Path) -> None:
    """The measure against the frame number, one colour a class, TEST frames as filled dots and
    TRAIN frames as rings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(dict.fromkeys(cls for _, _, cls, _, _ in frames))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(9, 3.6), layout="constrained")
    for i, cls in enumerate(classes):
        for split in ("TRAIN", "TEST"):
            points = [(f, v) for _, s, c, f, v in frames if c == cls and s == split]
            if not points:
                continue
            x, y = zip(*points, strict=True)
            filled = split == "TEST"
            ax.scatter(
                x, y, s=22 if filled else 14, linewidths=1,
                facecolors=colours(i % 10) if filled else "none", edgecolors=colours(i % 10),
                label=f"{cls}" if split == "TRAIN" else None,
            )  # fmt: skip
    ax.set(xlabel="frame", ylabel=ylabel, title=title)
    ax.legend(fontsize=7, ncols=2, title="class (rings TRAIN, dots TEST)", title_fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=SETS)
    parser.add_argument("--cut", choices=CUTS, default="end")
    parser.add_argument("--out", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--brightness", action="store_true", help="print each time block's mean pixel values"
    )
    parser.add_argument(
        "--nuclei", action="store_true", help="print each time block's nuclei per frame"
    )
    parser.add_argument("--plot", type=Path, help="with --nuclei: nuclei against frame, a PNG")
    args = parser.parse_args()
    if args.plot and not args.nuclei:
        parser.error("--plot draws the nuclei counts: give --nuclei too")
    root = build(args.name, args.cut, args.out)
    for split, counts in sorted(split_counts(root).items()):
        print(f"{split}: {sum(counts.values())} images, {dict(sorted(counts.items()))}")
    measures = [("mean", mean_brightness)] * args.brightness + [("nuclei", nuclei_count)] * (
        args.nuclei
    )
    for label, measure in measures:
        frames = measure_frames(root, measure)
        for split, cls, first, last, low, high in by_block(frames):
            print(
                f"  {split:5} {cls:16} frames {first:5.0f}-{last:5.0f}  {label} {low:6.1f}-{high:6.1f}"
            )
        if label == "nuclei" and args.plot:
            title = f"{args.name}:{args.cut}, nuclei per frame (Otsu + watershed, green channel)"
            plot_by_frame(frames, title, "nuclei", args.plot)
            print(f"plot: {args.plot}")
    print(root)


if __name__ == "__main__":
    main()
