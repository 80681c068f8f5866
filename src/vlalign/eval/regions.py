"""Top-down region selection by text relevance (PS3: Shi et al. 2025, §3: at inference the prompt picks
which high-resolution regions to encode, instead of encoding them all).

The candidate regions are the cells of a 3×3 grid over the image (``vlalign.data.regions``), each cut
from the stored image and embedded alone; a query text scores every cell by cosine similarity and
the best ``k`` are selected. PS3 scores regions on its low-resolution feature map with a trained
selector, so that unselected regions are never encoded at high resolution; at this scale encoding
all nine crops is cheap, and it scores the region embeddings the region contrast trained.

The ``region-select`` task asks, for every object whose name is unique in its held-out scene, whether
the query "a small red circle" selects that object's cell. Chance is 1/9; a model that only knows
empty cells from occupied ones reaches about 1/(objects in the scene), which is reported too. Colour
alone settles most items, so ``top1_shared_colour`` scores only the objects whose colour another
object of the scene shares: there the shape or size has to be read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vlalign.api import Aligner
from vlalign.data.regions import grid_crops, region_caption
from vlalign.data.shapes import GRID
from vlalign.errors import DataError
from vlalign.eval.grounding import load_scene_items
from vlalign.eval.tasks import TaskResult, task

CELLS = GRID * GRID


@torch.inference_mode()
def cell_embeddings(model: Aligner, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Every grid cell of every image, embedded alone: [N, 9, E]."""
    crops = [crop for image in images for crop in grid_crops(image)]
    return model.encode_image(crops).view(len(images), CELLS, -1)


@torch.inference_mode()
def region_scores(model: Aligner, cells: torch.Tensor, queries: Sequence[str]) -> torch.Tensor:
    """cells [N, 9, E] (``cell_embeddings``) and one query per row -> [N, 9] cosine similarities."""
    return torch.einsum("nce,ne->nc", cells, model.encode_text(list(queries)))


def select_regions(model: Aligner, images: Sequence[np.ndarray], queries: Sequence[str], k: int = 1) -> torch.Tensor:
    """The ``k`` cells (row-major indices) most relevant to each image's query: [N, k], best first."""
    if len(images) != len(queries):
        raise DataError(f"got {len(images)} images but {len(queries)} queries; give one query per image")
    return region_scores(model, cell_embeddings(model, images), queries).topk(k, dim=1).indices


@task("region-select", shapes_world=True)
def region_select(model: Aligner, spec: str | None) -> TaskResult:
    """Top-1 of the named object's cell among the nine, selected by the query "a <size> <colour> <shape>"."""
    spec, images, samples, image_index, objects, blocks = load_scene_items(model, spec, "region-select")
    cells = cell_embeddings(model, images)  # [N, 9, E]
    scores = region_scores(model, cells[torch.tensor(image_index)], [region_caption(o) for o in objects])
    right = scores.argmax(1) == torch.tensor(blocks)  # [M]
    occupied = np.mean([1 / len(samples[i].meta["scene"].objects) for i in image_index])
    # Items whose colour another object of the scene shares: colour alone cannot pick the cell.
    shared = torch.tensor([sum(o.colour == obj.colour for o in samples[i].meta["scene"].objects) > 1
                           for i, obj in zip(image_index, objects)])
    result = {"task": "region-select", "data": spec, "n": len(objects), "top1": right.float().mean().item(),
              "chance": 1 / CELLS, "chance_among_objects": float(occupied), "n_shared_colour": int(shared.sum()),
              "top1_shared_colour": right[shared].float().mean().item() if shared.any() else float("nan")}
    return TaskResult([result])
