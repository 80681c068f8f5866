"""Extra views of a batch's samples, read by auxiliary objectives (issue 11, items 8-11).

A view is called by ``collate`` with the batch's samples and returns more batch entries. Texts the
text tower must embed go under ``extra_texts`` (token ids, any leading shape, padding 0) and images
the vision tower must embed under ``extra_images`` ([B, C, H, W]); the dual encoder embeds both
inside its forward and returns them by name. Anything else is a plain batch entry.

- ``ClauseView`` (VELVET-Med): each caption split into clauses, ``extra_texts["clauses"]`` [B, M, L]
  and ``clause_valid`` [B, M];
- ``AttributeView`` (MeDSLIP): one attribute text per stream, ``extra_texts["attribute_<name>"]`` [B, L];
- ``RegionView`` (PS3): one object's region crop and its caption, ``extra_images["region"]``,
  ``extra_texts["region"]``;
- ``DescriptionView`` (GPT4Image): cached text embeddings of each caption, ``description_embeds``
  [B, D] and ``description_ids`` [B].
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

import torch

from vlalign.data.regions import sample_region
from vlalign.data.sample import Sample
from vlalign.data.shapes import Scene, ShapeObject
from vlalign.data.tokenizer import TextTokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import DataError

# Stream name -> the attribute of an object it reads (MeDSLIP's anatomy/pathology streams, here the shapes
# world's independent attributes).
ATTRIBUTES: dict[str, Callable[[ShapeObject], str]] = {
    "shape": lambda obj: obj.shape,
    "colour": lambda obj: obj.colour,
    "size": lambda obj: obj.size,
}

# Clauses end at punctuation; a conjunction that opens a clause ("..., and a green star at the top") is dropped.
# "and" inside a clause stays ("a black and white photo"), and a relation ("a red circle to the left of a blue
# square") is one clause: one statement about two objects.
_CLAUSE_BREAK = re.compile(r"[,;:.]")
_LEADING_CONJUNCTION = re.compile(r"^(?:and|with|but)\s+")


class View(Protocol):
    def __call__(self, samples: list[Sample], tokenizer: TextTokenizer, context_length: int,
                 transform: ImageTransform) -> dict: ...


def split_clauses(caption: str) -> list[str]:
    """The clauses of a caption in order, e.g. "three shapes: a red circle above a blue square, and a green
    star at the top" -> ["three shapes", "a red circle above a blue square", "a green star at the top"]."""
    parts = (_LEADING_CONJUNCTION.sub("", p.strip()) for p in _CLAUSE_BREAK.split(caption))
    return [part for part in parts if part]


def attribute_text(scene: Scene, stream: str) -> str:
    """One stream's text: that attribute of every object, in object order ("red and blue")."""
    return " and ".join(ATTRIBUTES[stream](obj) for obj in scene.objects)


def _scene(sample: Sample, what: str) -> Scene:
    scene = sample.meta.get("scene")
    if not isinstance(scene, Scene):
        raise DataError(f"Sample {sample.key} has no shapes scene: {what} need a shapes source (the attributes of "
                        "each object are known there) without data.cache_dir.")
    return scene


class ClauseView:
    """VELVET-Med's sentence level: up to ``max_clauses`` clauses per caption (later ones are dropped)."""

    def __init__(self, max_clauses: int):
        self.max_clauses = max_clauses

    def __call__(self, samples, tokenizer, context_length, transform) -> dict:
        M = self.max_clauses
        clauses = [split_clauses(s.caption)[:M] for s in samples]
        valid = torch.tensor([[m < len(c) for m in range(M)] for c in clauses])  # [B, M]
        flat = [c[m] if m < len(c) else "" for c in clauses for m in range(M)]
        ids, _ = tokenizer(flat, context_length)  # [B*M, L]
        ids[~valid.flatten()] = 0  # an empty slot is all padding (the model skips it)
        return {"extra_texts": {"clauses": ids.view(len(samples), M, -1)}, "clause_valid": valid}


class AttributeView:
    """MeDSLIP's streams: the attribute text of each stream, e.g. shape "circle and star", colour "red and blue"."""

    def __init__(self, streams: tuple[str, ...]):
        unknown = [s for s in streams if s not in ATTRIBUTES]
        if unknown:
            raise ValueError(f"unknown attribute stream {unknown[0]!r}: choose from {', '.join(ATTRIBUTES)}")
        self.streams = streams

    def __call__(self, samples, tokenizer, context_length, transform) -> dict:
        scenes = [_scene(s, "attribute streams (objective.name=medslip)") for s in samples]
        texts = {}
        for stream in self.streams:
            texts[f"attribute_{stream}"] = tokenizer([attribute_text(sc, stream) for sc in scenes], context_length)[0]
        return {"extra_texts": texts}


class RegionView:
    """PS3's local view: one object's grid-cell crop per image and its caption ("a small red circle")."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, samples, tokenizer, context_length, transform) -> dict:
        regions = [sample_region(s, self.seed) for s in samples]
        crops = transform([crop for crop, _, _ in regions])  # [B, C, H, W], each crop scaled up to the model's size
        ids, _ = tokenizer([caption for _, caption, _ in regions], context_length)
        return {"extra_images": {"region": crops}, "extra_texts": {"region": ids},
                "region_blocks": torch.tensor([block for _, _, block in regions])}


class DescriptionView:
    """GPT4Image: each caption's row of a table of cached text embeddings."""

    def __init__(self, texts: list[str], embeddings: torch.Tensor):
        if len(texts) != embeddings.shape[0]:
            raise ValueError(f"{len(texts)} texts but {embeddings.shape[0]} embedding rows")
        self.row = {text: i for i, text in enumerate(texts)}
        self.embeddings = embeddings  # [U, D]

    def __call__(self, samples, tokenizer, context_length, transform) -> dict:
        missing = [s.caption for s in samples if s.caption not in self.row]
        if missing:
            raise DataError(f"Caption {missing[0]!r} has no cached description embedding: the table is built from the "
                            "training source's captions when the run starts; this sample is not among them.")
        ids = torch.tensor([self.row[s.caption] for s in samples])  # [B]
        return {"description_embeds": self.embeddings[ids], "description_ids": ids}


def merge_into(batch: dict, entries: dict) -> None:
    """Add a view's entries to ``batch``; ``extra_texts``/``extra_images`` merge by name."""
    for key, value in entries.items():
        if key in ("extra_texts", "extra_images"):
            batch.setdefault(key, {}).update(value)
        else:
            batch[key] = value
