"""Grounding probe for position-guided prompts (PTP, Wang et al. 2023): which block holds the object
a prompt names?

For every object of a held-out shapes scene whose class name is unique in it, the image is scored
against the nine texts that put that object in each of the 3x3 blocks; the probe is right when the
true block scores highest (ties count as wrong; chance is 1/9). Two phrasings:

- ``block``: PTP's prompt, "the block 4 has a red circle";
- ``caption``: the training captions' words, "a small red circle in the centre".

A CLIP model never trained on PTP prompts can still ground with the caption phrasing, so the pair
separates learning positions from learning the prompt format. FILIP runs are scored token-wise.
"""

from __future__ import annotations

import torch

from vlalign.api import Aligner
from vlalign.data.ptp import PROMPT, block_of
from vlalign.data.shapes import GRID, POSITION_PHRASES
from vlalign.data.specs import build_source
from vlalign.errors import DataError
from vlalign.eval.late_interaction import paired_similarities
from vlalign.eval.tasks import TaskResult, load_arrays, task
from vlalign.eval.tasks import _shapes_eval_spec as shapes_eval_spec

BLOCKS = GRID * GRID
PHRASINGS = {
    "block": lambda obj, block: PROMPT.format(block=block, name=obj.name),
    "caption": lambda obj, block: f"a {obj.phrase} {POSITION_PHRASES[block]}",
}


def grounding_items(samples: list, image_size: int) -> tuple[list[int], list, list[int]]:
    """(image index, object, true block) for every object whose class name is unique in its scene."""
    images, objects, blocks = [], [], []
    for i, sample in enumerate(samples):
        scene = sample.meta["scene"]
        for obj in scene.objects:
            if sum(o.name == obj.name for o in scene.objects) == 1:
                images.append(i)
                objects.append(obj)
                blocks.append(block_of(obj, image_size))
    return images, objects, blocks


def load_scene_items(model: Aligner, spec: str | None, task_name: str) -> tuple[str, list, list, list[int], list, list[int]]:
    """The multi-object shapes scenes both grounding tasks read (default: held-out scenes like the run's
    training world) -> (spec, images, samples, image index, objects, true blocks) as ``grounding_items``."""
    spec = spec or shapes_eval_spec(model, model.config.eval.zeroshot_n, "exclude").replace(",objects=1", "")
    source = build_source(spec)
    if not hasattr(source, "scene"):
        raise DataError(f"The {task_name} task needs shapes scenes (known object positions); {spec} has none.")
    images, _, _, samples = load_arrays(source, model.config.eval.zeroshot_n)
    return spec, images, samples, *grounding_items(samples, images[0].shape[-1])


def block_accuracy(scores: torch.Tensor, true_blocks: torch.Tensor) -> float:
    """scores [M, 9] of each item's nine candidate blocks -> the fraction whose true block strictly wins."""
    truth = scores.gather(1, true_blocks[:, None])  # [M, 1]
    wins = (scores < truth).sum(1) == BLOCKS - 1
    return wins.float().mean().item()


def candidate_scores(model: Aligner, images: list, image_index: list[int], texts: list[str]) -> torch.Tensor:
    """Score image ``image_index[m // 9]`` against ``texts[m]`` -> [M, 9]."""
    rows = torch.tensor(image_index).repeat_interleave(BLOCKS)  # [M*9]
    if model.late_interaction:
        scores = paired_similarities(model, model.encode_image_tokens(images), rows, texts)
    else:
        unique = list(dict.fromkeys(texts))
        column = {t: i for i, t in enumerate(unique)}
        text_embeds = model.encode_text(unique)[[column[t] for t in texts]]  # [M*9, E]
        scores = (model.encode_image(images)[rows] * text_embeds).sum(-1)
    return scores.view(-1, BLOCKS)


@task("grounding", shapes_world=True)
def grounding(model: Aligner, spec: str | None) -> TaskResult:
    """Top-1 of the true block among nine, for PTP's block prompts and for caption phrasing."""
    spec, images, _, image_index, objects, blocks = load_scene_items(model, spec, "grounding")
    true_blocks = torch.tensor(blocks)
    result = {"task": "grounding", "data": spec, "n": len(objects), "chance": 1 / BLOCKS}
    for name, phrase in PHRASINGS.items():
        texts = [phrase(obj, block) for obj in objects for block in range(BLOCKS)]
        result[f"{name}_top1"] = block_accuracy(candidate_scores(model, images, image_index, texts), true_blocks)
    return TaskResult([result])
