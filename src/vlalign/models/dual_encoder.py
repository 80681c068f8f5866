"""The two-tower alignment model: a vision tower and a text tower pulled into one embedding space.

Heads are components: ``PooledProjection`` (CLIP: a linear map of the pooled feature) by default;
token-level heads (FDT, ...) plug in the same way. ``forward`` returns features, never a loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.models.text import TextFeatures, TextTransformer
from vlalign.models.vit import VisionFeatures, VisionTransformer


@dataclass
class AlignmentOutput:
    image_embeds: torch.Tensor  # [B, E] L2-normalised
    text_embeds: torch.Tensor  # [B, E] L2-normalised
    logit_scale: torch.Tensor  # [] exp of the learnable log-scale
    logit_bias: torch.Tensor  # [] used by the sigmoid loss
    vision: VisionFeatures
    text: TextFeatures
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # head-specific outputs (e.g. FDT code weights,
    # "class_logits" [B, K] from the optional image classifier)
    negative_embeds: torch.Tensor | None = None  # [B, E] L2-normalised hard-negative captions, when given


class PooledProjection(nn.Module):
    """CLIP head: a bias-free linear map of the tower's pooled feature, L2-normalised."""

    reads_tokens = False

    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=width**-0.5)

    def forward(self, features: VisionFeatures | TextFeatures) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.normalize(self.proj(features.pooled), dim=-1), {}


class FDTHead(nn.Module):
    """FDT head (METHODS.md §2): ground the tower's tokens (patches without CLS; real text tokens) in the
    shared codebook; the embedding is the normalised sparse mixture of codes. Extras carry the code weights."""

    reads_tokens = True

    def __init__(self, grounding: nn.Module):
        super().__init__()
        self.grounding = grounding

    def forward(self, features: VisionFeatures | TextFeatures) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.grounding(features.tokens, features.mask)
        return out.embedding, {"fdt_weights": out.weights}


class DualEncoder(nn.Module):
    """``classifier`` (optional) maps the vision features to class logits, for supervised objectives."""

    def __init__(self, vision: VisionTransformer, text: TextTransformer, image_head: nn.Module, text_head: nn.Module,
                 init_temperature: float = 0.07, classifier: nn.Module | None = None):
        super().__init__()
        self.vision = vision
        self.text = text
        self.image_head = image_head
        self.text_head = text_head
        self.classifier = classifier
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        # SigLIP (Zhai et al. 2023 §3): bias starts at -10 so that the many negatives start near p=0.
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def encode_image(self, images: torch.Tensor, channel_ids: torch.Tensor | None = None,
                     pooled_only: bool = False) -> torch.Tensor:
        """[B, C, H, W] normalised pixels -> [B, E] unit-norm embeddings. ``pooled_only``: skip the work
        whose result the head does not read (see ``VisionTransformer.forward``); the same embeddings."""
        return self.image_head(self._vision(images, channel_ids, pooled_only))[0]

    def classify_image(self, images: torch.Tensor, channel_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C, H, W] normalised pixels -> [B, K] class logits (needs a model built with a classifier)."""
        if self.classifier is None:
            raise ValueError("this model has no classification head; build it with model.num_classes > 0")
        return self.classifier(self.vision(images, channel_ids))

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
                    pooled_only: bool = False) -> torch.Tensor:
        """[B, L] token ids (0 = padding) -> [B, E] unit-norm embeddings. ``pooled_only``: as ``encode_image``
        (the text tower then also drops the padding columns after the longest caption: keep it off for tracing)."""
        mask = ids != 0 if mask is None else mask
        return self.text_head(self._text(ids, mask, pooled_only))[0]

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                channel_ids: torch.Tensor | None = None, negative_ids: torch.Tensor | None = None,
                negative_mask: torch.Tensor | None = None, embeddings_only: bool = False) -> AlignmentOutput:
        """``negative_ids``/``negative_mask`` [B, L]: hard-negative captions, embedded by the text tower
        into ``negative_embeds`` (inside forward, so that DDP sees every use of the weights).
        ``embeddings_only``: the caller reads the embeddings, extras and logit scale/bias only (a loss
        on embeddings): towers whose head reads only the pooled feature compute just that (``tokens`` None)."""
        vision = self._vision(images, channel_ids, embeddings_only)
        text = self._text(text_ids, text_mask, embeddings_only)
        image_embeds, image_extras = self.image_head(vision)
        text_embeds, text_extras = self.text_head(text)
        extras = {f"image_{k}": v for k, v in image_extras.items()} | {f"text_{k}": v for k, v in text_extras.items()}
        if self.classifier is not None:
            extras["class_logits"] = self.classifier(vision)
        negative_embeds = None
        if negative_ids is not None:
            negative_embeds = self.text_head(self._text(negative_ids, negative_mask, embeddings_only))[0]
        return AlignmentOutput(image_embeds, text_embeds, self.logit_scale.exp(), self.logit_bias, vision, text,
                               extras, negative_embeds)

    def _vision(self, images: torch.Tensor, channel_ids: torch.Tensor | None, pooled_only: bool) -> VisionFeatures:
        if pooled_only and not self.image_head.reads_tokens:
            return self.vision(images, channel_ids, pooled_only=True)
        return self.vision(images, channel_ids)

    def _text(self, ids: torch.Tensor, mask: torch.Tensor, pooled_only: bool) -> TextFeatures:
        # A pretrained Hugging Face tower has no pooled-only path.
        if pooled_only and not self.text_head.reads_tokens and isinstance(self.text, TextTransformer):
            return self.text(ids, mask, pooled_only=True)
        return self.text(ids, mask)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters exempt from weight decay: norms, biases, embeddings, positions, scales."""
        names = set()
        for name, param in self.named_parameters():
            if param.ndim < 2 or "pos" in name or "embedding" in name or "cls_token" in name:
                names.add(name)
        return names
