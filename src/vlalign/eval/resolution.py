"""Test-time resolution search (MindVL, arXiv 2509.11662; METHODS.md §4 row 29): evaluate one trained
dual encoder at several input resolutions and keep the best on a held-out selection split.

The image tower's position table is resampled to each grid (``vlalign.models.positions``), so a model
trained at 32 px also reads 24 or 48 px images. Only the preprocessing changes: images are resized to
the searched size instead of the training size. The choice is made on ``select_spec`` and reported on
``test_spec`` too, so the reported score is not the maximum of noisy draws it was picked by.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vlalign.api import Aligner
from vlalign.data.transforms import ImageTransform
from vlalign.errors import VlalignError
from vlalign.data.specs import build_source
from vlalign.eval.retrieval import retrieval_metrics
from vlalign.eval.tasks import _generic_label_set as generic_label_set
from vlalign.eval.tasks import _shapes_label_sets as shapes_label_sets
from vlalign.eval.tasks import load_arrays, prompt_ensemble
from vlalign.eval.zeroshot import PromptBank, classification_metrics

SEARCH_TASKS = ("zeroshot", "retrieval")


@dataclass
class ResolutionSearch:
    curve: list[dict]  # per size: {"image_size", "select": score, "test": score (when a test split was given)}
    best_size: int  # the size with the highest selection score (the smaller one on a tie)
    trained_size: int
    task: str


def at_resolution(aligner: Aligner, image_size: int) -> Aligner:
    """The same model reading images resized to ``image_size`` (a multiple of the patch size)."""
    patch = aligner.config.model.vision.patch_size
    if image_size < patch or image_size % patch:
        raise VlalignError(f"Image size {image_size} is not a positive multiple of the patch size {patch}.")
    t = aligner.transform
    return dataclasses.replace(aligner, transform=ImageTransform(image_size, t.in_channels, t.mean, t.std))


class SplitScorer:
    """One number per resolution on one labelled split: zero-shot top-1 of the finest label set
    (shape+colour on the shapes world), or the mean of text->image and image->text Recall@1.

    Text does not depend on the image size, so prompts or captions are embedded once; each size
    re-encodes the images only. No figures are drawn (``vlalign eval`` draws them)."""

    def __init__(self, aligner: Aligner, task: str, spec: str):
        if task not in SEARCH_TASKS:
            raise VlalignError(f"Resolution search scores with one of {', '.join(SEARCH_TASKS)}, got '{task}'.")
        source = build_source(spec)
        limit = aligner.config.eval.zeroshot_n if task == "zeroshot" else aligner.config.eval.retrieval_n
        self.images, captions, labels, samples = load_arrays(source, limit)
        self.task = task
        if task == "retrieval":
            self.text_embeds = aligner.encode_text(captions)  # [N, E]
            return
        is_shapes = hasattr(source, "scene")
        label_sets = shapes_label_sets(samples) if is_shapes else generic_label_set(source)
        _, prompts, set_labels = label_sets["shape+colour" if is_shapes else "class"]
        self.labels = torch.tensor(labels if set_labels is None else set_labels)
        self.num_classes = len(prompts)
        self.bank = PromptBank(aligner.encode_text, prompts, prompt_ensemble(aligner, is_shapes))

    def __call__(self, aligner: Aligner) -> float:
        image_embeds = aligner.encode_image(self.images)  # [N, E]
        if self.task == "retrieval":
            metrics = retrieval_metrics(image_embeds, self.text_embeds)
            return (metrics["t2i_R@1"] + metrics["i2t_R@1"]) / 2
        return classification_metrics(self.bank.scores(image_embeds), self.labels, self.num_classes)["top1"]


def resolution_search(aligner: Aligner, sizes: list[int], select_spec: str, test_spec: str | None = None,
                      task: str = "zeroshot") -> ResolutionSearch:
    """Score ``aligner`` at every size in ``sizes`` on ``select_spec`` (and ``test_spec``); pick the best."""
    if not sizes:
        raise VlalignError("Resolution search needs at least one image size.")
    select = SplitScorer(aligner, task, select_spec)
    test = SplitScorer(aligner, task, test_spec) if test_spec is not None else None
    curve = []
    for size in sorted(set(sizes)):
        model = at_resolution(aligner, size)
        point = {"image_size": size, "select": select(model)}
        if test is not None:
            point["test"] = test(model)
        curve.append(point)
    best = max(curve, key=lambda p: (p["select"], -p["image_size"]))
    return ResolutionSearch(curve, best["image_size"], aligner.config.data.image_size, task)
