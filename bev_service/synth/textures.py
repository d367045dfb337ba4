"""Procedural albedo of the ground materials: multi-scale value noise, paving and slab joints,
worn paint, cracks. Colours are drawn per world, so no two worlds share one asphalt or one grass."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
N_MATERIALS = 13
# material ids as in ground.Material (kept as plain ints here to avoid an import cycle)
GRASS, DRY_GRASS, SOIL, GRAVEL, MULCH, ASPHALT, PATCH, LOT, CONCRETE, PAVERS, CURB, WHITE, YELLOW = range(N_MATERIALS)

# relative amplitude of low (metres), mid (decimetres) and per-cell noise, per material
_AMPLITUDE = np.array(
    [
        (0.18, 0.16, 0.10),  # grass
        (0.15, 0.14, 0.10),  # dry grass
        (0.15, 0.12, 0.10),  # soil
        (0.08, 0.10, 0.16),  # gravel
        (0.12, 0.12, 0.12),  # mulch
        (0.08, 0.05, 0.08),  # asphalt
        (0.06, 0.05, 0.07),  # repaired asphalt
        (0.08, 0.05, 0.08),  # lot asphalt
        (0.06, 0.04, 0.04),  # concrete
        (0.06, 0.05, 0.06),  # pavers
        (0.04, 0.04, 0.04),  # curb
        (0.03, 0.03, 0.03),  # white paint
        (0.03, 0.03, 0.03),  # yellow paint
    ],
    dtype=np.float32,
)


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> NDArray[np.float32]:
    """Smooth noise of about unit variance with features ``cell_px`` cells across (bicubic value noise)."""
    coarse = (max(2, int(np.ceil(shape[0] / cell_px)) + 1), max(2, int(np.ceil(shape[1] / cell_px)) + 1))
    grid = rng.standard_normal(coarse, dtype=np.float32)
    return np.asarray(cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), dtype=np.float32)


def material_colours(rng: np.random.Generator) -> NDArray[np.float32]:
    """(N_MATERIALS, 3) base RGB of one world: asphalt from fresh black to sun-bleached pale (and darker
    when wet), grass from lush green through olive to dry yellow, soil from grey to red-brown, pavers
    of brick, grey or sand stone."""
    grey = float(rng.choice([rng.uniform(38.0, 70.0), rng.uniform(70.0, 110.0), rng.uniform(110.0, 150.0)], p=[0.3, 0.45, 0.25]))
    tint = rng.uniform(-5.0, 5.0, size=3) + rng.uniform(0.0, 6.0) * np.array([1.0, 0.6, -0.4])  # brownish aggregate
    wet = rng.uniform(0.55, 0.8) if rng.random() < 0.2 else 1.0
    asphalt = (np.array([grey, grey, grey + 2.0]) + tint) * wet
    pavers = [(150.0, 96.0, 84.0), (136.0, 134.0, 136.0), (172.0, 150.0, 118.0), (110.0, 112.0, 118.0), (96.0, 90.0, 86.0)]
    grasses = [(70.0, 104.0, 46.0), (52.0, 86.0, 38.0), (96.0, 110.0, 52.0), (128.0, 124.0, 66.0), (150.0, 136.0, 80.0)]
    dry = [(130.0, 122.0, 74.0), (160.0, 146.0, 92.0), (112.0, 104.0, 66.0)]
    soils = [(112.0, 88.0, 62.0), (96.0, 84.0, 74.0), (140.0, 96.0, 64.0)]
    colours = np.array(
        [
            np.array(grasses[int(rng.integers(len(grasses)))]) * rng.uniform(0.75, 1.2),
            np.array(dry[int(rng.integers(len(dry)))]) * rng.uniform(0.85, 1.1),
            np.array(soils[int(rng.integers(len(soils)))]) * rng.uniform(0.8, 1.15),
            np.array([140.0, 132.0, 120.0]) * rng.uniform(0.75, 1.1),
            np.array([84.0, 60.0, 44.0]) * rng.uniform(0.8, 1.2),
            asphalt,
            asphalt * rng.choice([rng.uniform(0.7, 0.85), rng.uniform(1.15, 1.35)]),
            asphalt * rng.uniform(0.92, 1.15),
            np.array([170.0, 167.0, 160.0]) * rng.uniform(0.75, 1.1) * (0.5 + 0.5 * wet),
            np.array(pavers[int(rng.integers(len(pavers)))]) * rng.uniform(0.85, 1.1),
            np.array([192.0, 190.0, 184.0]) * rng.uniform(0.75, 1.05),
            np.array([230.0, 230.0, 224.0]) * rng.uniform(0.8, 1.0),
            np.array([232.0, 182.0, 46.0]) * rng.uniform(0.85, 1.0),
        ],
        dtype=np.float32,
    )
    return np.clip(colours, 0.0, 255.0)


def _lut(values: NDArray[np.float32], materials: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Per-material values (N_MATERIALS,) looked up for every cell (cv2.LUT: one fast pass)."""
    table = np.zeros((1, 256), dtype=np.float32)
    table[0, : values.size] = values
    return np.asarray(cv2.LUT(materials, table), dtype=np.float32)


def albedo_raster(materials: NDArray[np.uint8], rng: np.random.Generator, cell_m: float, origin: FloatArray) -> NDArray[np.uint8]:
    """(rows, cols, 3) uint8 albedo of a material raster."""
    shape = (materials.shape[0], materials.shape[1])
    colours = material_colours(rng)
    # one channel at a time: full-size (rows, cols, 3) float temporaries cost seconds
    shade = 1.0 + _lut(_AMPLITUDE[:, 0], materials) * value_noise(rng, shape, 5.0 / cell_m)
    shade += _lut(_AMPLITUDE[:, 1], materials) * value_noise(rng, shape, 0.5 / cell_m)
    shade += _lut(_AMPLITUDE[:, 2], materials) * rng.standard_normal(shape, dtype=np.float32)
    _joints(shade, materials, cell_m, origin, _PAVER_SIZES[int(rng.integers(len(_PAVER_SIZES)))])
    hue = value_noise(rng, shape, 1.5 / cell_m)
    hue *= materials <= DRY_GRASS
    channels = []
    for c, hue_gain in enumerate((0.05, -0.06, 0.02)):
        channel = _lut(colours[:, c], materials)
        channel *= shade
        channel *= 1.0 + hue_gain * hue
        channels.append(channel)
    rgb = np.asarray(cv2.merge(channels), dtype=np.float32)
    _paint(rgb, materials, rng, colours, cell_m)
    _cracks(rgb, materials, rng)
    return np.asarray(cv2.convertScaleAbs(rgb), dtype=np.uint8)  # rounds and saturates (all values are >= 0)


# paving stone (length, width) in metres: bricks, square slabs, cobbles
_PAVER_SIZES = ((0.30, 0.15), (0.20, 0.10), (0.60, 0.60), (0.40, 0.40), (0.12, 0.12))


def _joints(
    shade: NDArray[np.float32], materials: NDArray[np.uint8], cell_m: float, origin: FloatArray, paver_m: tuple[float, float]
) -> None:
    """Darken the joints between paving stones (``paver_m``, staggered) and concrete slabs (1.5 m), in place."""
    for material, factor in ((PAVERS, 0.72), (CONCRETE, 0.8)):
        rows, cols = np.nonzero(materials == material)
        x = origin[0] + (cols + 0.5) * cell_m
        y = origin[1] + (rows + 0.5) * cell_m
        if material == PAVERS:
            v = y / paver_m[1]
            u = x / paver_m[0] + 0.5 * (np.floor(v) % 2)
            joint = ((u % 1.0) < 0.05 / paver_m[0]) | ((v % 1.0) < 0.05 / paver_m[1])
        else:
            joint = ((x % 1.5) < cell_m) | ((y % 1.5) < cell_m)
        shade[rows[joint], cols[joint]] *= factor


def _paint(
    rgb: NDArray[np.float32], materials: NDArray[np.uint8], rng: np.random.Generator, colours: NDArray[np.float32], cell_m: float
) -> None:
    """Worn paint: blend the paint colour over the asphalt beneath by a wear mask."""
    paint = (materials == WHITE) | (materials == YELLOW)
    rows, cols = np.nonzero(paint)
    wear_strength = float(rng.uniform(0.0, 0.6))
    wear = value_noise(rng, materials.shape, 1.2 / cell_m)[rows, cols]
    speckle = value_noise(rng, materials.shape, 0.15 / cell_m)[rows, cols]
    alpha = np.clip(0.95 + 0.15 * speckle - wear_strength * np.maximum(wear, 0.0), 0.3, 1.0)[:, None]
    under = colours[ASPHALT] * (1.0 + 0.08 * speckle[:, None])
    rgb[rows, cols] = under * (1 - alpha) + rgb[rows, cols] * alpha


def _cracks(rgb: NDArray[np.float32], materials: NDArray[np.uint8], rng: np.random.Generator) -> None:
    """Thin dark random-walk cracks on the asphalt."""
    mask = np.zeros(materials.shape, dtype=np.uint8)
    rows, cols = materials.shape
    for _ in range(int(rng.integers(150, 400))):
        steps = rng.normal(0.0, 1.0, size=(int(rng.integers(8, 40)), 2)).cumsum(axis=0) * 3.0
        start = rng.uniform([0, 0], [cols, rows])
        cv2.polylines(mask, [np.round(start + steps).astype(np.int32).reshape(-1, 1, 2)], False, 1, 1)
    road = (materials >= ASPHALT) & (materials <= LOT) & (mask > 0)
    rgb[road] *= 0.6
