"""Image regions for localized contrast (PS3: Shi et al. 2025, "Scaling Vision Pre-Training to 4K
Resolution", §3): the cells of a grid over the image, and the region of one object of a shapes scene.

PS3 contrasts features of high-resolution local crops with local captions. Here a region is one cell
of the shapes world's 3×3 grid, cut from the stored image (at its full resolution, before the
model's resize, so a 64 px scene gives a 21 px crop that is then scaled up to the model's input: the
"high-resolution local view" next to the downscaled global one). Every object lies wholly inside
one cell and a cell holds at most one object, so the crop of an object's cell shows that object
alone; its region caption names it: "a small red circle".
"""

from __future__ import annotations

import zlib

import numpy as np

from vlalign.data.ptp import block_of
from vlalign.data.sample import Sample
from vlalign.data.shapes import GRID, Scene, ShapeObject
from vlalign.errors import DataError

REGION_CAPTION = "a {phrase}"


def cell_bounds(index: int, length: int, grid: int = GRID) -> tuple[int, int]:
    """Pixel range [start, end) of row or column ``index`` of ``grid`` over ``length`` pixels (the
    shapes world's own rounding, so crops match its cells exactly)."""
    return round(index * length / grid), round((index + 1) * length / grid)


def grid_crop(image: np.ndarray, block: int, grid: int = GRID) -> np.ndarray:
    """Cell ``block`` (row-major) of ``image`` [C, H, W] -> [C, h, w]."""
    if not 0 <= block < grid * grid:
        raise ValueError(f"block {block} is outside the {grid}x{grid} grid (0..{grid * grid - 1})")
    row, col = divmod(block, grid)
    y0, y1 = cell_bounds(row, image.shape[-2], grid)
    x0, x1 = cell_bounds(col, image.shape[-1], grid)
    return image[:, y0:y1, x0:x1]


def grid_crops(image: np.ndarray, grid: int = GRID) -> list[np.ndarray]:
    """Every cell of ``image`` [C, H, W], row-major: the candidate regions of top-down selection."""
    return [grid_crop(image, block, grid) for block in range(grid * grid)]


def region_caption(obj: ShapeObject) -> str:
    return REGION_CAPTION.format(phrase=obj.phrase)


def sample_region(sample: Sample, seed: int) -> tuple[np.ndarray, str, int]:
    """(crop [C, h, w], region caption, block) of one object of the sample's scene, drawn from
    ``(seed, sample key)`` so that a resumed run draws the same."""
    scene = sample.meta.get("scene")
    if not isinstance(scene, Scene):
        raise DataError(f"Sample {sample.key} has no shapes scene: region crops (objective.name=ps3) need a "
                        "shapes source (object boxes are known there) without data.cache_dir.")
    rng = np.random.default_rng([seed, zlib.crc32(sample.key.encode())])
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    block = block_of(obj, sample.image.shape[-1])
    return grid_crop(sample.image, block), region_caption(obj), block
