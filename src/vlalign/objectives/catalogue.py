"""Objectives of catalogue issue 11, items 8-11: GPT4Image, MeDSLIP, VELVET-Med and PS3.

Each binds the model's features (including the extra views of ``vlalign.data.views``) to the losses
of its own module and returns ``(loss, metrics)`` with every term logged. Item 12 (LanguageBind) needs
no new loss: a CLIP run on another modality with the text side fixed (``model.text.lock_projection``).
"""

from __future__ import annotations

import torch

from vlalign.config import ObjectiveConfig
from vlalign.errors import ConfigError
from vlalign.models.dual_encoder import AlignmentOutput
from vlalign.objectives import Objective, register
from vlalign.objectives.contrastive import clip_loss
from vlalign.objectives.filip import filip_loss
from vlalign.objectives.hierarchical import clause_loss
from vlalign.objectives.multi_positive import grouped_clip_loss
from vlalign.objectives.prototypes import proto_nce_loss
from vlalign.objectives.streams import stream_alignment_loss, stream_separation_loss
from vlalign.objectives.supervised import classification_loss


def _need(mapping: dict, key: str, what: str) -> torch.Tensor:
    if key not in mapping:
        raise ConfigError(what)
    return mapping[key]


@register("gpt4image")
def gpt4image_objective(cfg: ObjectiveConfig) -> Objective:
    """GPT4Image (Ding et al. 2023): L = CE(classifier) + λ · grouped InfoNCE between the description head's
    projection of the image and the cached, frozen text embedding of the image's description. The paper
    describes the alignment as contrastive without an equation; the temperature is the model's logit scale."""

    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logits = _need(out.extras, "class_logits", "objective.name=gpt4image needs a classifier: set model.num_classes.")
        predicted = _need(out.extras, "description", "objective.name=gpt4image needs model.description_dim > 0.")
        target = _need(batch, "description_embeds", "objective.name=gpt4image needs cached description embeddings "
                       "in the batch (vlalign.data.views.DescriptionView).").to(predicted.device)
        if target.shape[-1] != predicted.shape[-1]:
            raise ConfigError(f"model.description_dim={predicted.shape[-1]} but objective.gpt4image.encoder gives "
                              f"{target.shape[-1]}-wide embeddings; set model.description_dim={target.shape[-1]}.")
        labels = batch["labels"].to(logits.device)
        ce = classification_loss(logits, labels)
        align = grouped_clip_loss(predicted, target, batch["description_ids"].to(predicted.device), out.logit_scale)
        loss = ce + cfg.gpt4image.weight * align
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        return loss, {"loss/supervised": ce.item(), "loss/description": align.item(), "train_accuracy": accuracy}

    return objective


@register("medslip")
def medslip_objective(cfg: ObjectiveConfig) -> Objective:
    """MeDSLIP (Fan et al. 2024): CLIP + ProtoNCE on k-means prototypes of the captions (from step
    ``proto_warmup_steps`` on; ``batch["step"]``, absent outside training, counts as past it) + each attribute
    stream against its attribute text + the separation of the streams of one image."""
    m = cfg.medslip

    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        scale = out.logit_scale
        clip = clip_loss(out.image_embeds, out.text_embeds, scale)
        loss, metrics = clip, {"loss/clip": clip.item()}
        if m.proto_weight and batch.get("step", m.proto_warmup_steps) >= m.proto_warmup_steps:
            proto = proto_nce_loss(out.image_embeds, out.text_embeds, scale, m.num_prototypes)
            loss = loss + m.proto_weight * proto
            metrics["loss/proto"] = proto.item()
        streams = {k.removeprefix("stream_"): v for k, v in out.extras.items() if k.startswith("stream_")}
        if m.stream_weight and streams:
            texts = {s: _need(out.extra_text_embeds, f"attribute_{s}", f"objective.name=medslip needs the attribute "
                              f"texts of stream '{s}' in the batch (vlalign.data.views.AttributeView).") for s in streams}
            ids = {s: batch["extra_texts"][f"attribute_{s}"].to(scale.device) for s in streams}
            align = stream_alignment_loss(streams, texts, ids, scale)
            loss = loss + m.stream_weight * align
            metrics["loss/streams"] = align.item()
        if m.separation_weight and len(streams) > 1:
            separation = stream_separation_loss(list(streams.values()))
            loss = loss + m.separation_weight * separation
            metrics["loss/separation"] = separation.item()
        return loss, metrics

    return objective


@register("velvet")
def velvet_objective(cfg: ObjectiveConfig) -> Objective:
    """VELVET-Med (Zhang et al. 2025): contrast at caption (CLIP), clause and word (token-patch) level."""
    v = cfg.velvet

    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        scale = out.logit_scale
        caption = clip_loss(out.image_embeds, out.text_embeds, scale)
        loss, metrics = caption, {"loss/caption": caption.item()}
        if v.clause_weight:
            clauses = _need(out.extra_text_embeds, "clauses", "objective.name=velvet needs the caption clauses in the "
                            "batch (vlalign.data.views.ClauseView).")
            ids = batch["extra_texts"]["clauses"].to(clauses.device)
            clause = clause_loss(out.image_embeds, clauses, ids, batch["clause_valid"].to(clauses.device), scale)
            loss = loss + v.clause_weight * clause
            metrics["loss/clause"] = clause.item()
        if v.word_weight:
            e = out.extras
            _need(e, "image_token_embeds", "objective.velvet.word_weight needs model.head=tokens (per-token embeddings).")
            word = filip_loss(e["image_token_embeds"], e["image_token_mask"], e["text_token_embeds"],
                              e["text_token_mask"], scale)
            loss = loss + v.word_weight * word
            metrics["loss/word"] = word.item()
        return loss, metrics

    return objective


@register("ps3")
def ps3_objective(cfg: ObjectiveConfig) -> Objective:
    """PS3 (Shi et al. 2025): global CLIP on the downscaled image + region contrast of an object's crop
    (from the full-resolution image) against its region caption, same captions being positives."""

    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        scale = out.logit_scale
        glob = clip_loss(out.image_embeds, out.text_embeds, scale)
        crops = _need(out.extra_image_embeds, "region", "objective.name=ps3 needs region crops in the batch "
                      "(vlalign.data.views.RegionView).")
        captions = out.extra_text_embeds["region"]
        region = grouped_clip_loss(crops, captions, batch["extra_texts"]["region"].to(crops.device), scale)
        loss = glob + cfg.ps3.region_weight * region
        return loss, {"loss/global": glob.item(), "loss/region": region.item()}

    return objective
