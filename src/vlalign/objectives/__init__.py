"""Objectives bind model outputs to losses: ``objective(output, batch) -> (loss, metrics)``.

Register a new one with ``@register("name")``; ``build_objective(cfg)`` picks it by
``objective.name``. Every registered objective is exercised by one parametrized test.
``embeddings_only=True`` declares that the loss reads only the image/text embeddings and the logit
scale/bias of the output, which is what GradCache accumulation (``train.accum_steps``) caches.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from vlalign.config import ObjectiveConfig
from vlalign.errors import ConfigError
from vlalign.models.dual_encoder import AlignmentOutput
from vlalign.models.vlm import VLMOutput
from vlalign.objectives.caption import caption_loss, next_token_targets
from vlalign.objectives.cgvlm import patch_token_contrastive_loss
from vlalign.objectives.contrastive import clip_loss, siglip_loss
from vlalign.objectives.supervised import classification_loss

Objective = Callable[[Any, dict], tuple[torch.Tensor, dict[str, float]]]
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
    """The objective for ``cfg.name``; its ``embeddings_only`` attribute says whether it reads only the
    embeddings and logit scale/bias (then the model may skip the token features no head reads)."""
    if cfg.name not in OBJECTIVES:
        raise ConfigError(f"Unknown objective.name '{cfg.name}'. Known: {', '.join(sorted(OBJECTIVES))}.")
    objective = OBJECTIVES[cfg.name](cfg)
    objective.embeddings_only = cfg.name in EMBEDDING_OBJECTIVES
    return objective


def _negatives(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Hard-negative caption embeddings [B, E] and their validity [B], or (None, None)."""
    if out.negative_embeds is None:
        return None, None
    return out.negative_embeds, batch["negative_valid"].to(out.negative_embeds.device)


@register("clip", embeddings_only=True)
def clip_objective(cfg: ObjectiveConfig) -> Objective:
    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = clip_loss(out.image_embeds, out.text_embeds, out.logit_scale, *_negatives(out, batch))
        return loss, {"loss/clip": loss.item()}

    return objective


@register("siglip", embeddings_only=True)
def siglip_objective(cfg: ObjectiveConfig) -> Objective:
    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = siglip_loss(out.image_embeds, out.text_embeds, out.logit_scale, out.logit_bias,
                           *_negatives(out, batch))
        return loss, {"loss/siglip": loss.item(), "logit_bias": out.logit_bias.item()}

    return objective


@register("fdt")
def fdt_objective(cfg: ObjectiveConfig) -> Objective:
    """InfoNCE on FDT features only, as the reference (METHODS.md §2.3), plus code-usage diagnostics."""
    from vlalign.models.fdt import code_usage_stats

    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if "image_fdt_weights" not in out.extras:
            raise ConfigError("objective.name=fdt needs model.head=fdt (the FDT head provides the code weights).")
        loss = clip_loss(out.image_embeds, out.text_embeds, out.logit_scale, *_negatives(out, batch))
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


def generative_loss(out: VLMOutput, batch: dict) -> torch.Tensor:
    """L_gen: next-token cross-entropy on the target tokens only (never the prefix, prompt or padding)."""
    targets, loss_mask = next_token_targets(batch["text_ids"], batch["target_mask"], out.prefix_len)
    return caption_loss(out.logits, targets, loss_mask)


@register("generative")
def generative_objective(cfg: ObjectiveConfig) -> Objective:
    """LLaVA: captioning (stage 1), instruction tuning (stage 2) and text-only LM pre-training."""

    def objective(out: VLMOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = generative_loss(out, batch)
        return loss, {"loss/gen": loss.item()}

    return objective


@register("cgvlm")
def cgvlm_objective(cfg: ObjectiveConfig) -> Objective:
    """CG-VLM (METHODS.md §3.3): L = L_gen + λ·L_con; with λ = 0 it is LLaVA's captioning loss."""

    def objective(out: VLMOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if out.image_tokens is None:
            raise ConfigError("objective 'cgvlm' needs image batches (model.arch 'vlm'); "
                              "use objective 'generative' for text only.")
        gen = generative_loss(out, batch)
        con = patch_token_contrastive_loss(out.image_tokens, out.image_mask, out.token_embeds,
                                           batch["content_mask"], out.logit_scale, cfg.pool)
        # λ = 0 adds nothing (not even 0·L_con, which would be NaN if L_con were); L_con is still logged.
        loss = gen if cfg.contrastive_weight == 0 else gen + cfg.contrastive_weight * con
        return loss, {"loss/gen": gen.item(), "loss/con": con.item()}

    return objective
