"""Compositional hard negatives in the style of ARO / SugarCrepe / VL-Checklist, generated from the
shapes world's structured scenes (the negative types of "Teaching Structured Vision&Language
Concepts", Doveh et al. 2023 §3.1).

Each image gets a canonical true caption (a ``Claim``) and, per negative type, one caption that
differs from it in exactly that respect and is *false for the scene* (checked by ``holds``):

- ``swap-attribute``: swap the colours (or, when equal, the sizes) of the two related objects;
- ``replace-attribute``: give one named object a colour that no object in the scene has;
- ``replace-object``: give one named object a shape that no object in the scene has;
- ``swap-relation``: left <-> right, above <-> below (single objects: the mirrored position);
- ``swap-order``: exchange the two related objects around the relation.

The model passes an item when the image is more similar to the true caption than to the negative
(ties fail); chance is 0.5 for every type.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from vlalign.api import Aligner
from vlalign.data.shapes import (
    COLOURS,
    GRID,
    POSITION_PHRASES,
    SHAPES,
    Scene,
    ShapeObject,
    true_relations,
)
from vlalign.data.specs import build_source
from vlalign.errors import DataError
from vlalign.eval import plots
from vlalign.eval.tasks import TaskResult, task
from vlalign.eval.tasks import _shapes_eval_spec as shapes_eval_spec

NEGATIVE_TYPES = ("swap-attribute", "replace-attribute", "replace-object", "swap-relation", "swap-order")
NEGATIVE_SEED = 11  # the rng stream that picks replacement colours/shapes, fixed so reruns agree
OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
            "below": "above"}


@dataclass(frozen=True)
class Mention:
    """An object as a caption names it: size, colour and shape (no position)."""

    size: str
    colour: str
    shape: str

    @classmethod
    def of(cls, obj: ShapeObject) -> Mention:
        return cls(obj.size, obj.colour, obj.shape)

    def matches(self, obj: ShapeObject) -> bool:
        return (self.size, self.colour, self.shape) == (obj.size, obj.colour, obj.shape)

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Claim:
    """What a caption asserts. One object: ``a`` sits in grid cell ``a_cell``. Two or more: ``a``
    stands in ``relation`` to ``b``; with a third, ``c`` also sits in cell ``c_cell``."""

    a: Mention
    a_cell: int | None = None
    relation: str | None = None
    b: Mention | None = None
    c: Mention | None = None
    c_cell: int | None = None

    @property
    def text(self) -> str:
        if self.b is None:
            return f"a {self.a.phrase} {POSITION_PHRASES[self.a_cell]}"
        pair = f"a {self.a.phrase} {self.relation} a {self.b.phrase}"
        if self.c is None:
            return pair
        return f"{pair}, and a {self.c.phrase} {POSITION_PHRASES[self.c_cell]}"


def _cell(obj: ShapeObject) -> int:
    return obj.row * GRID + obj.col


def holds(claim: Claim, scene: Scene) -> bool:
    """Whether some assignment of distinct scene objects to the claim's mentions makes it true."""
    objs = scene.objects
    if claim.b is None:
        return any(claim.a.matches(o) and _cell(o) == claim.a_cell for o in objs)
    for x in objs:
        for y in objs:
            if x is y or not (claim.a.matches(x) and claim.b.matches(y)):
                continue
            if claim.relation not in true_relations(x, y):
                continue
            if claim.c is None or any(z is not x and z is not y and claim.c.matches(z) and _cell(z) == claim.c_cell
                                      for z in objs):
                return True
    return False


def true_claim(scene: Scene) -> Claim:
    """The canonical true caption: the first two objects and the first relation that holds
    (``RELATIONS`` order), plus the third object's position."""
    objs = scene.objects
    if len(objs) == 1:
        return Claim(Mention.of(objs[0]), a_cell=_cell(objs[0]))
    relation = true_relations(objs[0], objs[1])[0]  # distinct cells: at least one relation holds
    c = objs[2] if len(objs) > 2 else None
    return Claim(Mention.of(objs[0]), relation=relation, b=Mention.of(objs[1]),
                 c=None if c is None else Mention.of(c), c_cell=None if c is None else _cell(c))


def _unused(values, used: set[str], rng: np.random.Generator) -> str | None:
    free = [v for v in values if v not in used]
    return None if not free else free[int(rng.integers(len(free)))]


def _mirror(cell: int) -> int | None:
    """The left/right mirror of a cell, else its top/bottom mirror; None for the centre."""
    row, col = divmod(cell, GRID)
    if col != GRID // 2:
        return row * GRID + (GRID - 1 - col)
    if row != GRID // 2:
        return (GRID - 1 - row) * GRID + col
    return None


def hard_negatives(scene: Scene, rng: np.random.Generator) -> dict[str, Claim]:
    """Negative type -> one caption that differs from ``true_claim(scene)`` in that respect and is
    false for the scene. Types that cannot apply (e.g. ``swap-order`` with one object) are absent."""
    truth = true_claim(scene)
    # Replacements edit a or b (picked by rng) of the related pair, or the single object.
    target = "a" if truth.b is None or rng.random() < 0.5 else "b"
    mention: Mention = getattr(truth, target)
    candidates: dict[str, Claim | None] = {}
    colour = _unused(COLOURS, {o.colour for o in scene.objects}, rng)
    shape = _unused(SHAPES, {o.shape for o in scene.objects}, rng)
    candidates["replace-attribute"] = colour and replace(truth, **{target: replace(mention, colour=colour)})
    candidates["replace-object"] = shape and replace(truth, **{target: replace(mention, shape=shape)})
    if truth.b is None:
        mirrored = _mirror(truth.a_cell)
        candidates["swap-relation"] = None if mirrored is None else replace(truth, a_cell=mirrored)
    else:
        a, b = truth.a, truth.b
        if a.colour != b.colour:
            candidates["swap-attribute"] = replace(truth, a=replace(a, colour=b.colour), b=replace(b, colour=a.colour))
        elif a.size != b.size:
            candidates["swap-attribute"] = replace(truth, a=replace(a, size=b.size), b=replace(b, size=a.size))
        candidates["swap-relation"] = replace(truth, relation=OPPOSITE[truth.relation])
        candidates["swap-order"] = replace(truth, a=b, b=a)
    return {kind: claim for kind in NEGATIVE_TYPES if (claim := candidates.get(kind)) is not None
            and claim.text != truth.text and not holds(claim, scene)}


def negative_accuracy(image_embeds: torch.Tensor, true_embeds: torch.Tensor, negative_embeds: torch.Tensor,
                      owners: list[int], kinds: list[str]) -> dict:
    """Per negative type, the fraction of items whose image scores its true caption above the negative.

    image_embeds, true_embeds [N, E] (row i: image i and its true caption); negative_embeds [M, E],
    negative j belonging to image ``owners[j]`` with type ``kinds[j]``.
    """
    owner = torch.tensor(owners)
    true_score = (image_embeds * true_embeds).sum(-1)[owner]  # [M]
    negative_score = (image_embeds[owner] * negative_embeds).sum(-1)  # [M]
    correct = true_score > negative_score  # ties fail
    out: dict = {}
    for kind in NEGATIVE_TYPES:
        picked = torch.tensor([k == kind for k in kinds], dtype=torch.bool)
        if picked.any():
            out[kind] = correct[picked].float().mean().item()
            out[f"{kind}_n"] = int(picked.sum())
    out["accuracy"] = correct.float().mean().item()
    out["macro_accuracy"] = float(np.mean([out[k] for k in NEGATIVE_TYPES if k in out]))
    out["n"] = len(owners)
    return out


def _scenes_spec(model: Aligner, n: int) -> str:
    """1-3 object scenes like the training world's (same channels, held-out combos excluded)."""
    single = shapes_eval_spec(model, n, "exclude")  # ends in the run's channels/holdout options
    return single.replace(",objects=1,", ",objects=1-3,").replace("seed=2", "seed=5")


@task("compositional-negatives", shapes_world=True)
def compositional_negatives(model: Aligner, spec: str | None) -> TaskResult:
    """True caption vs one hard negative per type (attribute/object replaced, attribute/relation/order
    swapped) on shapes scenes; accuracy per negative type, chance 0.5."""
    n = model.config.eval.retrieval_n
    spec = spec or _scenes_spec(model, n)
    source = build_source(spec)
    if not hasattr(source, "scene"):
        raise DataError(f"Hard negatives are generated from shapes scenes; {spec} is not a shapes source. "
                        "Use --data shapes:n=500,seed=5 (or leave --data out).")
    count = min(n, len(source))
    scenes = [source.scene(i) for i in range(count)]
    truths, negatives, owners, kinds = [], [], [], []
    for i, scene in enumerate(scenes):
        truths.append(true_claim(scene).text)
        rng = np.random.default_rng(np.random.SeedSequence([NEGATIVE_SEED, i]))
        for kind, claim in hard_negatives(scene, rng).items():
            negatives.append(claim.text)
            owners.append(i)
            kinds.append(kind)
    images = [source[i].image for i in range(count)]
    metrics = negative_accuracy(model.encode_image(images), model.encode_text(truths), model.encode_text(negatives),
                                owners, kinds)
    examples = [{"truth": truths[o], "negative": t, "type": k} for o, t, k in list(zip(owners, negatives, kinds))[:10]]
    result = {"task": "compositional-negatives", "data": spec, **metrics, "examples": examples}
    return TaskResult([result], {"compositional hard negatives": _bar_chart(metrics)})


def _bar_chart(metrics: dict) -> bytes:
    kinds = [k for k in NEGATIVE_TYPES if k in metrics]
    fig, ax = plots.plt.subplots(figsize=(6.5, 3))
    ax.bar(kinds, [metrics[k] for k in kinds], color="#2b6cb0")
    ax.axhline(0.5, color="#c53030", linestyle="--", linewidth=1, label="chance")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (true > negative)")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend()
    return plots.to_png(fig)
