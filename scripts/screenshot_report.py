"""Renders a run's report.html in headless Chromium and saves a screenshot of the whole page.

    python scripts/screenshot_report.py runs/default                  # runs/default/report.png
    python scripts/screenshot_report.py runs/default --out shot.png
    python scripts/screenshot_report.py runs/default --out docs/images/report.png \\
        --crop_height 1500 --width 640                                  # the README's picture

The browser is Debian's Chromium (`apt-get install chromium`; `.ci/run` installs it for CI),
at /usr/bin/chromium or `--chromium`. The flags keep it off the network (this machine has
none): no sync, component updates, background requests or QUIC, a fresh profile each time.

Chromium's `--screenshot` captures the window, not the page, so the window is made tall
(`--height`) and the white below the page's end is cut off; a page that reaches the window's
bottom is reported as cut. Exit status 1 with one line on stderr when the report or the
browser is missing or the browser fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
WIDTH = 1280
# Tall enough for a report with every section; Chromium's own limit is 16384 px.
HEIGHT = 12000
FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)
# A row whose every pixel is at least this bright counts as the page's white background.
WHITE = 250


def render(
    html_path: Path,
    out: Path,
    width: int = WIDTH,
    height: int = HEIGHT,
    chromium: str = CHROMIUM,
    timeout: float = 120.0,
) -> Path:
    """Chromium's screenshot of `html_path` in a `width` x `height` window, saved at `out`.

    Raises:
        FileNotFoundError: no such page or browser.
        RuntimeError: the browser failed or wrote no screenshot.
    """
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(f"{html_path} does not exist")
    if not Path(chromium).is_file():
        raise FileNotFoundError(f"{chromium} does not exist: apt-get install chromium")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="cellkeras-chromium-") as profile:
        command = [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={out.resolve()}",
            f"--window-size={width},{height}",
            html_path.as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not out.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"chromium exited {done.returncode} without {out}: {last}")
    return out


def trim_to_page(path: Path, margin: int = 24) -> tuple[int, bool]:
    """Cuts the white below the page's last non-white row (plus `margin`) off the PNG at
    `path`; returns the new height and whether the page seems to run past the window."""
    image = Image.open(path).convert("RGB")
    grey = np.asarray(image.convert("L"))
    rows = np.flatnonzero((grey < WHITE).any(axis=1))
    last = int(rows[-1]) if rows.size else 0
    cut = last >= grey.shape[0] - margin
    height = min(grey.shape[0], last + 1 + margin)
    image.crop((0, 0, image.width, height)).save(path)
    return height, cut


def shrink(path: Path, crop_height: int | None, width: int | None) -> None:
    """Keeps the top `crop_height` pixels and scales to `width` (for a small picture of the
    page's start)."""
    image = Image.open(path).convert("RGB")
    if crop_height:
        image = image.crop((0, 0, image.width, min(crop_height, image.height)))
    if width and width < image.width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.save(path, optimize=True)


def screenshot_report(
    run_dir: Path,
    out: Path | None = None,
    height: int = HEIGHT,
    chromium: str = CHROMIUM,
    crop_height: int | None = None,
    width: int | None = None,
) -> tuple[Path, bool]:
    """The whole page of `run_dir/report.html` as a PNG (default `run_dir/report.png`);
    returns the path and whether the page was cut by the window's height."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "report.png"
    render(run_dir / "report.html", out, WIDTH, height, chromium)
    _, cut = trim_to_page(out)
    if crop_height or width:
        shrink(out, crop_height, width)
    return out, cut


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a trainer run folder holding report.html")
    parser.add_argument("--out", type=Path, default=None, help="PNG (default RUN_DIR/report.png)")
    parser.add_argument("--height", type=int, default=HEIGHT, help="window height in pixels")
    parser.add_argument("--chromium", default=CHROMIUM, help="the browser (default %(default)s)")
    parser.add_argument("--crop_height", type=int, default=None, help="keep the top N px")
    parser.add_argument("--width", type=int, default=None, help="scale down to N px wide")
    args = parser.parse_args(argv)
    try:
        out, cut = screenshot_report(
            args.run_dir, args.out, args.height, args.chromium, args.crop_height, args.width
        )
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"screenshot_report: error: {err}", file=sys.stderr)
        return 1
    size = Image.open(out).size
    note = f" (the page runs past {args.height} px: raise --height)" if cut else ""
    print(f"{out}: {size[0]}x{size[1]} px{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
