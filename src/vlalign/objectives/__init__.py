"""Objectives bind model outputs to losses: ``objective(output, batch) -> (loss, metrics)``.

Register a new one with ``@register("name")``; ``build_objective(cfg)`` picks it by
``objective.name``. Every registered objective is exercised by one parametrized test.
``embeddings_only=True`` declares that the loss reads only the image/text embeddings and the logit
scale/bias of the output, which is what GradCache accumulation (``train.accum_steps``) caches.
"""

from __future__ import annotations

from typing import Callable

import torch

from vlalign.config import ObjectiveConfig
from vlalign.errors import ConfigError
from vlalign.models.dual_encoder import AlignmentOutput
from vlalign.objectives.contrastive import clip_loss, siglip_loss
from vlalign.objectives.supervised import classification_loss

Objective = Callable[[AlignmentOutput, dict], tuple[torch.Tensor, dict[str, float]]]
OBJECTIVES: dict[str, Callable[[ObjectiveConfig], Objective]] = {}
EMBEDDING_OBJECTIVES: set[str] = set()


def register(name: str, embeddings_only: bool = False):
    def wrap(factory: Callable[[ObjectiveConfig], Objective]):
        OBJECTIVES[name] = factory
        if embeddings_only:
            EMBEDDING_OBJECTIVES.add(name)
        return factory

    return wrap


def build_objective(cfg: ObjectiveConfig) -> Objective:
    if cfg.name not in OBJECTIVES:
        raise ConfigError(f"Unknown objective.name '{cfg.name}'. Known: {', '.join(sorted(OBJECTIVES))}.")
    return OBJECTIVES[cfg.name](cfg)


@register("clip", embeddings_only=True)
def clip_objective(cfg: ObjectiveConfig) -> Objective:
    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
        return loss, {"loss/clip": loss.item()}

    return objective


@register("siglip", embeddings_only=True)
def siglip_objective(cfg: ObjectiveConfig) -> Objective:
    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = siglip_loss(out.image_embeds, out.text_embeds, out.logit_scale, out.logit_bias)
        return loss, {"loss/siglip": loss.item(), "logit_bias": out.logit_bias.item()}

    return objective


@register("fdt")
def fdt_objective(cfg: ObjectiveConfig) -> Objective:
    """InfoNCE on FDT features only, as the reference (METHODS.md §2.3), plus code-usage diagnostics."""
    from vlalign.models.fdt import code_usage_stats

    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if "image_fdt_weights" not in out.extras:
            raise ConfigError("objective.name=fdt needs model.head=fdt (the FDT head provides the code weights).")
        loss = clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
        stats = code_usage_stats(out.extras["image_fdt_weights"], out.extras["text_fdt_weights"])
        return loss, {"loss/fdt": loss.item(), **stats}

    return objective


@register("supervised")
def supervised_objective(cfg: ObjectiveConfig) -> Objective:
    """Cross-entropy of the image classifier's logits against ``batch["labels"]``; the text tower is unused."""

    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if "class_logits" not in out.extras:
            raise ConfigError("objective.name=supervised needs a model with a classifier: set model.num_classes.")
        logits = out.extras["class_logits"]  # [B, K]
        labels = batch["labels"].to(logits.device)
        loss = classification_loss(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        return loss, {"loss/supervised": loss.item(), "train_accuracy": accuracy}

    return objective
