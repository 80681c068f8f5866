"""Position-guided text prompts (PTP: Wang et al. 2023, "Position-guided Text Prompt for
Vision-Language Pre-training", §3.1), built from the shapes world's known object positions.

PTP cuts the image into N×N blocks (N = 3), finds objects with a detector, and writes fill-in-the-blank
prompts "The block [P] has a [O]": P is the block that holds the centre of the object's box
(row-major, 0 = top left), O the object's tag. The reference pretraining data (sail-sg/ptp,
``pretrain_dataset_concated_pred_tsv.py``) picks one object per image at random and appends its prompt
to the caption; no detector is needed at inference. The shapes world knows every object's box, so
the prompts here are true by construction: O is the object's class name ("red circle").
"""

from __future__ import annotations

import zlib

import numpy as np

from vlalign.data.sample import Sample
from vlalign.data.shapes import COLOURS, GRID, SHAPES, Scene, ShapeObject, object_box
from vlalign.errors import DataError

PROMPT = "the block {block} has a {name}"


def block_of(obj: ShapeObject, image_size: int, grid: int = GRID) -> int:
    """The block (row-major, of ``grid`` × ``grid``) holding the centre of the object's box, computed from
    pixels as the reference does from detector boxes."""
    y0, x0, d = object_box(obj, image_size)
    row = min(int((y0 + d / 2) / image_size * grid), grid - 1)
    col = min(int((x0 + d / 2) / image_size * grid), grid - 1)
    return row * grid + col


def position_prompts(scene: Scene, image_size: int) -> list[str]:
    """One prompt per object of the scene, in object order."""
    return [PROMPT.format(block=block_of(obj, image_size), name=obj.name) for obj in scene.objects]


def all_prompts() -> list[str]:
    """Every prompt the shapes world can produce (for fitting the tokenizer)."""
    return [PROMPT.format(block=b, name=f"{c} {s}") for b in range(GRID * GRID) for c in COLOURS for s in SHAPES]


def sample_prompt(sample: Sample, seed: int) -> str:
    """One object's prompt, drawn from ``(seed, sample key)`` so a resumed run draws the same."""
    scene = sample.meta.get("scene")
    if not isinstance(scene, Scene):
        raise DataError(f"Sample {sample.key} has no shapes scene: position prompts (objective.name=ptp or "
                        "objective.ptp_concat) need a shapes source without data.cache_dir.")
    prompts = position_prompts(scene, sample.image.shape[-1])
    rng = np.random.default_rng([seed, zlib.crc32(sample.key.encode())])
    return prompts[int(rng.integers(len(prompts)))]
