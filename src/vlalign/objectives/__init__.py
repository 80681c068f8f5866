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


def _paraphrases(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Positive-paraphrase embeddings [B, E] and their validity [B], or (None, None)."""
    if out.paraphrase_embeds is None:
        return None, None
    return out.paraphrase_embeds, batch["paraphrase_valid"].to(out.paraphrase_embeds.device)


@register("clip", embeddings_only=True)
def clip_objective(cfg: ObjectiveConfig) -> Objective:
    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = clip_loss(out.image_embeds, out.text_embeds, out.logit_scale, *_negatives(out, batch),
                         *_paraphrases(out, batch))
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
        loss = clip_loss(out.image_embeds, out.text_embeds, out.logit_scale, *_negatives(out, batch),
                         *_paraphrases(out, batch))
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


def generative_loss(out: VLMOutput, batch: dict, answer_share: float = 0.0) -> torch.Tensor:
    """L_gen: next-token cross-entropy on the target tokens only (never the prefix, prompt or padding).

    ``answer_share`` > 0 gives the batch's answer tokens (``batch["answer_mask"]``) that share of the loss
    and the other target tokens the rest, each part a mean over its tokens: in a "caption. question answer"
    document the answer is ~3% of the tokens, so a plain mean barely trains reading the caption (the
    answer is the only token that needs it). 1 = the answers alone; 0 = every target token alike.
    """
    targets, loss_mask = next_token_targets(batch["text_ids"], batch["target_mask"], out.prefix_len)
    if answer_share == 0:
        return caption_loss(out.logits, targets, loss_mask)
    _, answer = next_token_targets(batch["text_ids"], batch["answer_mask"], out.prefix_len)  # [B, P+L]
    rest = loss_mask & ~answer
    if not bool(answer.any()):
        return caption_loss(out.logits, targets, rest)
    if answer_share == 1 or not bool(rest.any()):
        return caption_loss(out.logits, targets, answer)
    return (answer_share * caption_loss(out.logits, targets, answer)
            + (1 - answer_share) * caption_loss(out.logits, targets, rest))


def answer_metrics(out: VLMOutput, batch: dict) -> dict[str, float]:
    """The loss on the answer tokens alone, when the batch has any (what text-QA and VQA accuracy follow)."""
    if "answer_mask" not in batch or not bool(batch["answer_mask"].any()):
        return {}
    with torch.no_grad():
        return {"loss/answer": generative_loss(out, batch, answer_share=1.0).item()}


def packing_metrics(out: VLMOutput) -> dict[str, float]:
    """Padding share of the decoder's rows, packed and as it would be unpacked (``data.pack_length`` > 0)."""
    if out.packing is None:
        return {}
    return {"pack/padding": out.packing.padding_fraction, "pack/unpacked_padding": out.packing.unpacked_padding_fraction,
            "pack/rows": out.packing.num_rows}


@register("generative")
def generative_objective(cfg: ObjectiveConfig) -> Objective:
    """LLaVA: captioning (stage 1), instruction tuning (stage 2) and text-only LM pre-training."""

    def objective(out: VLMOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = generative_loss(out, batch, cfg.answer_share)
        return loss, {"loss/gen": loss.item(), **answer_metrics(out, batch), **packing_metrics(out)}

    return objective


@register("cgvlm")
def cgvlm_objective(cfg: ObjectiveConfig) -> Objective:
    """CG-VLM (METHODS.md §3.3): L = L_gen + λ·L_con; with λ = 0 it is LLaVA's captioning loss."""

    def objective(out: VLMOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if out.image_tokens is None:
            raise ConfigError("objective 'cgvlm' needs image batches (model.arch 'vlm'); "
                              "use objective 'generative' for text only.")
        gen = generative_loss(out, batch, cfg.answer_share)
        words = batch["content_mask"]
        if cfg.contrastive_words == "content":
            # a caption of function words only (none in the shapes world) keeps all its words
            content = batch["content_word_mask"]
            words = torch.where(content.any(dim=1, keepdim=True), content, words)  # [B, L]
        con = patch_token_contrastive_loss(out.image_tokens, out.image_mask, out.token_embeds, words,
                                           out.logit_scale, cfg.pool)
        # λ = 0 adds nothing (not even 0·L_con, which would be NaN if L_con were); L_con is still logged.
        loss = gen if cfg.contrastive_weight == 0 else gen + cfg.contrastive_weight * con
        return loss, {"loss/gen": gen.item(), "loss/con": con.item(), **packing_metrics(out)}

    return objective


@register("filip")
def filip_objective(cfg: ObjectiveConfig) -> Objective:
    """FILIP / Wukong token-wise late interaction (``vlalign.objectives.filip``); needs model.head=tokens."""
    from vlalign.objectives.filip import filip_loss

    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if "image_token_embeds" not in out.extras:
            raise ConfigError("objective.name=filip needs model.head=tokens (per-token embeddings).")
        e = out.extras
        loss = filip_loss(e["image_token_embeds"], e["image_token_mask"], e["text_token_embeds"],
                          e["text_token_mask"], out.logit_scale)
        return loss, {"loss/filip": loss.item()}

    return objective


@register("unicl", embeddings_only=True)
def unicl_objective(cfg: ObjectiveConfig) -> Objective:
    """UniCL label-aware InfoNCE (``vlalign.objectives.unicl``): labelled-set samples of one class are
    positives of each other. A batch without ``text_types`` is all captions (then it is CLIP)."""
    from vlalign.objectives.unicl import unicl_loss

    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        device = out.image_embeds.device
        labels = batch["labels"].to(device)
        types = batch["text_types"].to(device) if "text_types" in batch else torch.zeros_like(labels)
        loss = unicl_loss(out.image_embeds, out.text_embeds, out.logit_scale, labels, types)
        return loss, {"loss/unicl": loss.item(), "label_fraction": types.float().mean().item()}

    return objective


@register("ptp")
def ptp_objective(cfg: ObjectiveConfig) -> Objective:
    """CLIP plus PTP's position-guided prompts as an auxiliary InfoNCE term (Wang et al. 2023):
    L = L_clip(image, caption) + ptp_weight · L_clip(image, "the block P has a O")."""

    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if out.prompt_embeds is None:
            raise ConfigError("objective.name=ptp needs position prompts in the batch (the shapes world's "
                              "scenes give them; see vlalign.data.ptp).")
        caption = clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
        prompt = clip_loss(out.image_embeds, out.prompt_embeds, out.logit_scale)
        loss = caption + cfg.ptp_weight * prompt
        return loss, {"loss/clip": caption.item(), "loss/ptp": prompt.item()}

    return objective


@register("fusion")
def fusion_objective(cfg: ObjectiveConfig) -> Objective:
    """FIBER / UNITER / ManagerTower on a fused dual encoder (``vlalign.models.cross_modal``):
    L = L_itc + L_itm (+ L_mlm when the model masks words) + wra_weight · L_wra. The contrastive term
    stays on the unimodal embeddings, so retrieval needs no fusion; the fused pairs carry the rest."""
    from vlalign.objectives.matching import masked_token_loss, matching_loss, word_region_loss

    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        fusion = out.fusion
        if fusion is None:
            raise ConfigError("objective.name=fusion needs fusion layers: set model.fusion.kind to fiber or manager.")
        itc = clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
        itm = matching_loss(fusion.match_logits, fusion.match_labels)
        accuracy = (fusion.match_logits.argmax(1) == fusion.match_labels).float().mean().item()
        loss = itc + itm
        metrics = {"loss/itc": itc.item(), "loss/itm": itm.item(), "itm_accuracy": accuracy}
        if fusion.mlm_logits is not None:
            mlm = masked_token_loss(fusion.mlm_logits, fusion.mlm_targets)
            loss = loss + mlm
            metrics |= {"loss/mlm": mlm.item(),
                        "mlm_accuracy": (fusion.mlm_logits.argmax(1) == fusion.mlm_targets).float().mean().item()}
        if cfg.wra_weight > 0:
            wra = word_region_loss(fusion.fused, fusion.match_labels)
            loss = loss + cfg.wra_weight * wra
            metrics["loss/wra"] = wra.item()
        return loss, metrics

    return objective


# Catalogue items 8-11 register themselves (GPT4Image, MeDSLIP, VELVET-Med, PS3).
from vlalign.objectives import catalogue as _catalogue  # noqa: E402,F401
from vlalign.objectives import continual as _continual  # noqa: E402,F401  (CTP, issue 13)
from vlalign.objectives import salt as _salt  # noqa: E402,F401  (catalogue issue 12)
# Issue 13 item 8: video-text (E-ViLM's masked video modelling).
from vlalign.objectives import video as _video  # noqa: E402,F401
from vlalign.objectives import text_mlm as _text_mlm  # noqa: E402,F401  (catalogue issue 12, tiny LMs)
