"""White blood cells of `cellkeras.data.synthetic`: their morphology, placement and drawing.

`make_white_cell` samples a cell's membrane, nucleus polygons, stains and texture by kind (see
the `cellkeras.data.synthetic` docstring for what tells the four kinds apart);
`place_white_cells` finds centres inside the field; `draw_white_cell` composites one over the
field's stain maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cellkeras.data.smear import CYTO, EOSIN, GRANULE, NUCLEUS

# Mean cell radius in units; the order lymphocyte < neutrophil ~ eosinophil < monocyte is the
# real one (7-10, 12-15, 12-17, 15-22 micrometres), compressed so size alone never decides.
WHITE_RADIUS = {"lymphocyte": 12.5, "neutrophil": 17.0, "eosinophil": 17.5, "monocyte": 19.5}
_SHIFT = 4  # cv2 sub-pixel bits: coordinates are passed multiplied by 16


@dataclass
class WhiteCell:
    """A white cell's geometry and stains in cell-local working pixels (centre at 0, 0)."""

    kind: str
    radius: float
    outline: np.ndarray  # (P, 2) cell membrane polygon
    nucleus: list[np.ndarray]  # polygons whose union is the nucleus
    nucleus_conc: float
    chromatin: tuple[int, float]  # texture grid size, relative amplitude
    cyto: tuple[float, float]  # eosin, basophil concentration of the cytoplasm
    granules: tuple[float, float, float, int]  # spacing, sigma (units of u), concentration, stain
    vacuoles: int
    u: float
    seed: int


def _ellipse(cx: float, cy: float, a: float, b: float, angle: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    c, s = math.cos(angle), math.sin(angle)
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack([cx + x * c - y * s, cy + x * s + y * c], axis=1)


def _strand(p: np.ndarray, q: np.ndarray, width: float) -> np.ndarray:
    """A thin quadrilateral from p to q: the chromatin filament joining two lobes."""
    direction = q - p
    normal = np.array([-direction[1], direction[0]]) / (np.hypot(*direction) + 1e-6)
    half = normal * width / 2
    return np.stack([p + half, q + half, q - half, p - half])


def make_white_cell(rng: np.random.Generator, kind: str, u: float, d: float) -> WhiteCell:
    """Samples one white cell's shape: membrane, nucleus polygons, stains and texture."""
    radius = WHITE_RADIUS[kind] * u * float(np.exp(rng.normal(0.0, 0.05 + 0.03 * d)))
    big = kind == "lymphocyte" and rng.uniform() < 0.12 * d
    if big:  # a large (reactive) lymphocyte: more cytoplasm, looks like a small monocyte
        radius *= rng.uniform(1.15, 1.35)
    r = radius
    rot = rng.uniform(0.0, 2 * np.pi)
    nucleus: list[np.ndarray] = []
    granules = (2.0, 0.6, 0.0, NUCLEUS)
    vacuoles = 0

    if kind == "lymphocyte":
        a = r * (rng.uniform(0.62, 0.72) if big else rng.uniform(0.76, 0.88))
        off = rng.normal(0.0, 0.05 * r, size=2)
        nucleus.append(_ellipse(off[0], off[1], a, a * rng.uniform(0.86, 1.0), rot, 32))
        if rng.uniform() < 0.15 * d:  # a shallow cleft, as in a notched lymphocyte
            _notch(nucleus, a, rot, rng.uniform(0.1, 0.25))
        nucleus_conc = rng.uniform(1.15, 1.45)
        chromatin = (int(rng.integers(4, 7)), rng.uniform(0.15, 0.3))
        cyto = (rng.uniform(0.0, 0.06), rng.uniform(0.5, 0.9))
    elif kind == "monocyte":
        a, b = r * rng.uniform(0.62, 0.72), r * rng.uniform(0.46, 0.55)
        depth = rng.uniform(0.15, 0.5 + 0.25 * d)  # deep notches look horseshoe / bilobed
        width = rng.uniform(0.35, 0.65)
        t = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
        x, y = a * np.cos(t), b * np.sin(t)
        dt = np.angle(np.exp(1j * (t - np.pi / 2)))
        y = y - depth * 2 * b * np.exp(-0.5 * (dt / width) ** 2)
        off = rng.normal(0.0, 0.08 * r, size=2)
        c, s = math.cos(rot), math.sin(rot)
        nucleus.append(np.stack([off[0] + x * c - y * s, off[1] + x * s + y * c], axis=1))
        nucleus_conc = rng.uniform(0.7, 0.95)
        chromatin = (int(rng.integers(8, 12)), rng.uniform(0.25, 0.4))
        cyto = (rng.uniform(0.1, 0.2), rng.uniform(0.3, 0.5))
        vacuoles = int(rng.integers(0, 6))
    elif kind == "neutrophil":
        n_lobes = 2 if rng.uniform() < 0.07 * d else int(rng.choice([3, 3, 4, 4, 5]))
        lobe = r * rng.uniform(0.2, 0.25)
        nucleus += _lobed_nucleus(rng, n_lobes, lobe, r, strand=(0.2, 0.4), elongation=1.35, n=20)
        nucleus_conc = rng.uniform(1.0, 1.3)
        chromatin = (int(rng.integers(5, 8)), rng.uniform(0.15, 0.3))
        cyto = (rng.uniform(0.2, 0.32), rng.uniform(0.0, 0.08))
        granules = (2.0, 0.5, rng.uniform(0.05, 0.12), NUCLEUS)
    else:  # eosinophil
        n_lobes = 3 if rng.uniform() < 0.07 * d else 2
        lobe = r * rng.uniform(0.27, 0.34)
        nucleus += _lobed_nucleus(rng, n_lobes, lobe, r, strand=(0.3, 0.5), elongation=1.25, n=24)
        nucleus_conc = rng.uniform(0.95, 1.25)
        chromatin = (int(rng.integers(5, 8)), rng.uniform(0.15, 0.3))
        cyto = (rng.uniform(0.1, 0.2), rng.uniform(0.0, 0.05))
        # Fewer, paler granules at higher difficulty drift towards a neutrophil.
        fill = rng.uniform(max(0.3, 1.0 - 0.3 * d), 1.0)
        granules = (2.1 / math.sqrt(fill), 0.85, rng.uniform(0.5, 0.8) * fill, GRANULE)

    # Membrane: an ellipse with a little low-frequency wobble.
    t = np.linspace(0.0, 2 * np.pi, 40, endpoint=False)
    wobble = sum(
        rng.normal(0.0, 0.025) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    aspect = 1.0 + abs(rng.normal(0.0, 0.05))
    c, s = math.cos(rot), math.sin(rot)
    x, y = r * aspect * np.cos(t) * (1 + wobble), r * np.sin(t) * (1 + wobble)
    outline = np.stack([x * c - y * s, x * s + y * c], axis=1)
    return WhiteCell(
        kind=kind,
        radius=r,
        outline=outline,
        nucleus=nucleus,
        nucleus_conc=float(nucleus_conc),
        chromatin=chromatin,
        cyto=cyto,
        granules=granules,
        vacuoles=vacuoles,
        u=u,
        seed=int(rng.integers(0, 2**31)),
    )


def _notch(nucleus: list[np.ndarray], a: float, rot: float, depth: float) -> None:
    """Pushes the points of the last polygon near one side inwards (a cleft)."""
    pts = nucleus[-1]
    centre = pts.mean(axis=0)
    direction = np.array([-math.sin(rot), math.cos(rot)])
    rel = pts - centre
    along = rel @ direction / (np.hypot(rel[:, 0], rel[:, 1]) + 1e-6)
    push = depth * 2 * a * np.exp(-((np.arccos(np.clip(along, -1, 1)) / 0.45) ** 2) / 2)
    nucleus[-1] = pts - push[:, None] * direction


def _lobed_nucleus(
    rng: np.random.Generator,
    n_lobes: int,
    lobe: float,
    r: float,
    strand: tuple[float, float],
    elongation: float,
    n: int,
) -> list[np.ndarray]:
    """A segmented nucleus (neutrophil, eosinophil): lobes along a chain, joined by strands.

    Strand widths are U(*strand) x `lobe`; each lobe is an ellipse of semi-axes
    U(1, elongation) x `lobe` and `lobe` at a random angle, drawn with `n` points.
    """
    centres = _lobe_chain(rng, n_lobes, lobe, r)
    polygons = [
        _strand(p, q, lobe * rng.uniform(*strand))
        for p, q in zip(centres[:-1], centres[1:], strict=True)
    ]
    for p in centres:
        a = lobe * rng.uniform(1.0, elongation)
        polygons.append(_ellipse(p[0], p[1], a, lobe, rng.uniform(0, np.pi), n))
    return polygons


def _lobe_chain(rng: np.random.Generator, n: int, lobe: float, r: float) -> np.ndarray:
    """Lobe centres along a bending chain (C- or S-shaped), centred and kept inside the cell."""
    heading = rng.uniform(0.0, 2 * np.pi)
    turn_sign = rng.choice([-1.0, 1.0])
    pts = [np.zeros(2)]
    for _ in range(n - 1):
        step = lobe * rng.uniform(2.3, 2.9)
        pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
        if rng.uniform() < 0.25:
            turn_sign = -turn_sign
        heading += turn_sign * rng.uniform(0.4, 1.1)
    chain = np.array(pts)
    chain -= chain.mean(axis=0)
    reach = np.hypot(chain[:, 0], chain[:, 1]).max() + lobe * 1.3
    if reach > 0.9 * r:  # squeeze long chains so every lobe stays inside the membrane
        chain *= (0.9 * r - lobe * 1.3) / (reach - lobe * 1.3)
    return chain + rng.normal(0.0, 0.05 * r, size=2)


def place_white_cells(
    rng: np.random.Generator, cells: list[WhiteCell], hw: int, ww: int, scene: bool
) -> list[tuple[float, float]]:
    """Centres such that every white cell lies inside the field and (scenes) none overlap."""
    centres: list[tuple[float, float]] = []
    for cell in cells:
        lo = -cell.outline.min(axis=0) + 1.0
        hi = np.array([ww, hw]) - cell.outline.max(axis=0) - 1.0
        if np.any(hi < lo):
            raise ValueError(
                f"a {cell.kind} of radius {cell.radius:.0f} px does not fit a {ww}x{hw} field; "
                "use a larger image_size or a smaller cell_diameter."
            )
        for _ in range(500):
            x, y = rng.uniform(lo[0], hi[0]), rng.uniform(lo[1], hi[1])
            if not scene or all(
                math.hypot(x - px, y - py) > 1.1 * (cell.radius + other.radius) + 2
                for (px, py), other in zip(centres, cells, strict=False)
            ):
                break
        else:
            raise ValueError(
                f"{len(cells)} white cells do not fit a {ww}x{hw} field without overlapping; "
                "lower num_cells or cell_diameter."
            )
        centres.append((float(x), float(y)))
    return centres


def draw_white_cell(maps: np.ndarray, cell: WhiteCell, cx: float, cy: float) -> None:
    """Composites one white cell over the field's stain maps, in a patch around it."""
    hw, ww = maps.shape[:2]
    rng = np.random.default_rng(cell.seed)
    u = cell.u
    ext = np.abs(cell.outline).max() + 3.0
    x0, y0 = math.floor(cx - ext), math.floor(cy - ext)
    size = math.ceil(2 * ext) + 2
    origin = np.array([cx - x0 - 0.5, cy - y0 - 0.5])  # cv2 puts pixel centres on integers

    def fill(polys: list[np.ndarray]) -> np.ndarray:
        mask = np.zeros((size, size), dtype=np.uint8)
        for poly in polys:
            pts = np.round((poly + origin) * (1 << _SHIFT)).astype(np.int32)
            cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA, _SHIFT)
        return mask.astype(np.float32) / 255.0

    body = fill([cell.outline])
    nuc = fill(cell.nucleus)
    nuc = cv2.GaussianBlur(nuc, (0, 0), max(0.4, 0.45 * u))

    grid, amp = cell.chromatin
    coarse = rng.normal(0.0, 1.0, size=(grid, grid)).astype(np.float32)
    texture = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(
        rng.normal(0.0, 1.0, size=(size, size)).astype(np.float32), (0, 0), 0.7 * u
    )
    texture = np.clip(1.0 + amp * texture + 0.5 * amp * fine / (fine.std() + 1e-6), 0.3, 2.0)

    cyto = body * (1.0 - nuc)
    eosin_c, baso_c = cell.cyto
    patch = np.zeros((size, size, 4), dtype=np.float32)
    patch[..., EOSIN] = eosin_c * cyto
    patch[..., CYTO] = baso_c * cyto
    patch[..., NUCLEUS] = cell.nucleus_conc * nuc * texture

    spacing, g_sigma, g_conc, g_stain = cell.granules
    if g_conc > 0:
        # Granules as impulses scattered at random, then blurred into blobs: one blur instead
        # of a cv2.circle call per granule.
        count = rng.poisson(np.pi * cell.radius**2 / (spacing * u) ** 2)
        impulses = np.zeros((size, size), dtype=np.float32)
        gx = rng.integers(0, size, size=count)
        gy = rng.integers(0, size, size=count)
        np.add.at(impulses, (gy, gx), rng.uniform(0.6, 1.4, size=count).astype(np.float32))
        sigma = max(0.5, g_sigma * u)
        blobs = cv2.GaussianBlur(impulses, (0, 0), sigma) * (2 * np.pi * sigma**2)
        blobs = np.minimum(blobs, 1.6) * body * (1.0 - 0.5 * nuc)
        patch[..., g_stain] += g_conc * blobs
        if g_stain == NUCLEUS:  # neutrophil "toxic-free" granules are lilac, not purple
            patch[..., EOSIN] += 0.8 * g_conc * blobs

    if cell.vacuoles:
        holes = np.zeros((size, size), dtype=np.float32)
        vx = rng.integers(0, size, size=cell.vacuoles)
        vy = rng.integers(0, size, size=cell.vacuoles)
        holes[vy, vx] = 1.0
        sigma = 1.2 * u
        holes = np.minimum(cv2.GaussianBlur(holes, (0, 0), sigma) * (2 * np.pi * sigma**2), 1.0)
        patch[..., CYTO] *= 1.0 - 0.8 * holes * (1.0 - nuc)
        patch[..., EOSIN] *= 1.0 - 0.8 * holes * (1.0 - nuc)

    # Clip the patch to the field; the white cell covers most of the red cells beneath it.
    px0, py0 = max(0, -x0), max(0, -y0)
    px1, py1 = min(size, ww - x0), min(size, hw - y0)
    if px0 >= px1 or py0 >= py1:
        return
    roi = maps[y0 + py0 : y0 + py1, x0 + px0 : x0 + px1]
    alpha = body[py0:py1, px0:px1, None]
    roi *= 1.0 - 0.9 * alpha
    roi += patch[py0:py1, px0:px1]
