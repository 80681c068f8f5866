"""The two-tower alignment model: a vision tower and a text tower pulled into one embedding space.

Heads are components: ``PooledProjection`` (CLIP: a linear map of the pooled feature) by default;
token-level heads (FDT, FILIP's ``TokenProjection``) plug in the same way. An optional ``text_prefix``
(``vlalign.models.prefix``) conditions the text tower on the text type. An optional ``cross_modal``
(``vlalign.models.cross_modal``) fuses the towers for image-text matching and masked language modelling
(FIBER, UNITER, ManagerTower). ``forward`` returns features, never a loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.models.cross_modal import FusionOutput
from vlalign.models.text import TextFeatures, TextTransformer
from vlalign.models.text_committee import TextCommittee
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
    prompt_embeds: torch.Tensor | None = None  # [B, E] L2-normalised auxiliary prompts (PTP), when given
    fusion: FusionOutput | None = None  # fused pairs and their ITM/MLM logits, with a cross-modal module
    # Extra texts and images of the batch by name (``vlalign.data.views``): texts [B, ..., E] as the ids' leading
    # shape (all-padding rows give zeros), images [B, E]; all L2-normalised.
    extra_text_embeds: dict[str, torch.Tensor] = field(default_factory=dict)
    extra_image_embeds: dict[str, torch.Tensor] = field(default_factory=dict)
    paraphrase_embeds: torch.Tensor | None = None  # [B, E] L2-normalised positive paraphrases, when given


class PooledProjection(nn.Module):
    """CLIP head: a bias-free linear map of the tower's pooled feature, L2-normalised."""

    reads_tokens = False

    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=width**-0.5)

    def forward(self, features: VisionFeatures | TextFeatures) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.normalize(self.proj(features.pooled), dim=-1), {}


class TokenProjection(PooledProjection):
    """FILIP head (Yao et al. 2022, §3.1.1): the CLIP projection of the pooled feature, and the same
    projection of every token, L2-normalised per token, for token-wise late interaction. Extras:
    ``token_embeds`` [B, T, E] and ``token_mask`` [B, T] bool (True = real token; all real for patches).
    Its weights are named as ``PooledProjection``'s, so a CLIP checkpoint loads into it."""

    reads_tokens = True

    def forward(self, features: VisionFeatures | TextFeatures) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens = F.normalize(self.proj(features.tokens), dim=-1)  # [B, T, E]
        mask = features.mask
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return F.normalize(self.proj(features.pooled), dim=-1), {"token_embeds": tokens, "token_mask": mask}


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
    """``classifier`` (optional) maps the vision features to class logits, for supervised objectives;
    ``text_prefix`` (optional, a ``DatasetPrefix``) gives the text tower a learned prefix per text type;
    ``cross_modal`` (optional, a ``CrossModal``) fuses the two towers' features. ``image_heads`` (optional)
    are further heads on the vision features, each ``head(features)[0]`` returned as ``extras[name]``
    (GPT4Image's description head, MeDSLIP's attribute streams)."""

    def __init__(self, vision: VisionTransformer, text: TextTransformer, image_head: nn.Module, text_head: nn.Module,
                 init_temperature: float = 0.07, classifier: nn.Module | None = None,
                 text_prefix: nn.Module | None = None, cross_modal: nn.Module | None = None,
                 image_heads: nn.ModuleDict | None = None):
        super().__init__()
        self.vision = vision
        self.text = text
        self.image_head = image_head
        self.text_head = text_head
        self.classifier = classifier
        self.text_prefix = text_prefix
        self.cross_modal = cross_modal
        self.image_heads = image_heads
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
                    text_types: torch.Tensor | None = None, pooled_only: bool = False) -> torch.Tensor:
        """[B, L] token ids (0 = padding) -> [B, E] unit-norm embeddings. ``text_types`` [B] (see
        ``vlalign.models.prefix``) only matters with a text prefix; None reads every text as a caption.
        ``pooled_only``: as ``encode_image`` (the text tower then also drops the padding columns after the
        longest caption: keep it off for tracing)."""
        mask = ids != 0 if mask is None else mask
        return self.text_head(self.text_features(ids, mask, text_types, pooled_only))[0]

    def image_token_embeds(self, images: torch.Tensor,
                           channel_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch embeddings [B, T, E] and mask [B, T] (needs a token head: model.head=tokens)."""
        return self._token_embeds(self.image_head(self.vision(images, channel_ids))[1])

    def text_token_embeds(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
                          text_types: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token embeddings [B, L, E] and mask [B, L] (needs a token head: model.head=tokens)."""
        mask = ids != 0 if mask is None else mask
        return self._token_embeds(self.text_head(self.text_features(ids, mask, text_types))[1])

    @staticmethod
    def _token_embeds(extras: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if "token_embeds" not in extras:
            raise ValueError("this model's heads embed pooled features only; build it with model.head=tokens")
        return extras["token_embeds"], extras["token_mask"]

    def text_features(self, ids: torch.Tensor, mask: torch.Tensor, text_types: torch.Tensor | None = None,
                      pooled_only: bool = False) -> TextFeatures:
        """The text tower's features, behind the prefix of each text's type (captions when None) if any;
        ``pooled_only`` (no prefix): the pooled feature alone where the head reads nothing else."""
        if self.text_prefix is None:
            return self._text(ids, mask, pooled_only)
        prefix = self.text_prefix.caption(ids.shape[0]) if text_types is None else self.text_prefix(text_types)
        return self.text(ids, mask, prefix)

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                channel_ids: torch.Tensor | None = None, negative_ids: torch.Tensor | None = None,
                negative_mask: torch.Tensor | None = None, embeddings_only: bool = False, *,
                text_types: torch.Tensor | None = None,
                prompt_ids: torch.Tensor | None = None, prompt_mask: torch.Tensor | None = None,
                extra_texts: dict[str, torch.Tensor] | None = None,
                extra_images: dict[str, torch.Tensor] | None = None,
                paraphrase_ids: torch.Tensor | None = None,
                paraphrase_mask: torch.Tensor | None = None) -> AlignmentOutput:
        """``negative_ids``/``negative_mask`` [B, L]: hard-negative captions, embedded by the text tower
        into ``negative_embeds`` (inside forward, so that DDP sees every use of the weights); likewise
        ``paraphrase_ids``/``paraphrase_mask`` [B, L] (positive paraphrases) into ``paraphrase_embeds``,
        ``prompt_ids``/``prompt_mask`` [B, L] into ``prompt_embeds``, ``extra_texts`` (name -> ids [B, ..., L])
        into ``extra_text_embeds`` and ``extra_images`` (name -> [B, C, H, W]) into ``extra_image_embeds``.
        ``text_types`` [B]: the type of each text (caption or label) for the text prefix; negatives,
        prompts and extra texts read as captions. ``embeddings_only``: the caller reads the embeddings, extras
        and logit scale/bias only (a loss on embeddings): towers whose head reads only the pooled feature
        compute just that (``tokens`` None); ignored with fusion layers, which read every token."""
        fast = embeddings_only and self.cross_modal is None
        vision = self._vision(images, channel_ids, fast)
        text = self.text_features(text_ids, text_mask, text_types, fast)
        image_embeds, image_extras = self.image_head(vision)
        text_embeds, text_extras = self.text_head(text)
        extras = {f"image_{k}": v for k, v in image_extras.items()} | {f"text_{k}": v for k, v in text_extras.items()}
        if self.classifier is not None:
            extras["class_logits"] = self.classifier(vision)
        for name, head in (self.image_heads or {}).items():
            extras[name] = head(vision)[0]
        negative_embeds = prompt_embeds = paraphrase_embeds = None
        if negative_ids is not None:
            negative_embeds = self.text_head(self.text_features(negative_ids, negative_mask, None, fast))[0]
        if paraphrase_ids is not None:
            paraphrase_embeds = self.text_head(self.text_features(paraphrase_ids, paraphrase_mask, None, fast))[0]
        if prompt_ids is not None:
            prompt_embeds = self.text_head(self.text_features(prompt_ids, prompt_mask))[0]
        extra_text_embeds = {name: self._embed_texts(ids) for name, ids in (extra_texts or {}).items()}
        extra_image_embeds = {name: self.image_head(self.vision(x))[0] for name, x in (extra_images or {}).items()}
        fusion = None
        if self.cross_modal is not None:
            fusion = self.cross_modal(self.vision, self.text, vision, text, image_embeds, text_embeds,
                                      self.logit_scale.exp(), text_ids)
        return AlignmentOutput(image_embeds, text_embeds, self.logit_scale.exp(), self.logit_bias, vision, text,
                               extras, negative_embeds, prompt_embeds, fusion=fusion,
                               extra_text_embeds=extra_text_embeds, extra_image_embeds=extra_image_embeds,
                               paraphrase_embeds=paraphrase_embeds)

    def _embed_texts(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, ..., L] (0 = padding) -> [B, ..., E]; rows without a token are not run and embed as zeros."""
        flat = ids.reshape(-1, ids.shape[-1])  # [N, L]
        real = (flat != 0).any(1)  # [N]
        embeds = self.text_head(self.text_features(flat[real], flat[real] != 0))[0]  # [n, E]
        out = embeds.new_zeros(flat.shape[0], embeds.shape[-1]).index_put((real.nonzero()[:, 0],), embeds)
        return out.view(*ids.shape[:-1], -1)

    def _vision(self, images: torch.Tensor, channel_ids: torch.Tensor | None, pooled_only: bool) -> VisionFeatures:
        if pooled_only and not self.image_head.reads_tokens:
            return self.vision(images, channel_ids, pooled_only=True)
        return self.vision(images, channel_ids)

    def _text(self, ids: torch.Tensor, mask: torch.Tensor, pooled_only: bool) -> TextFeatures:
        # A pretrained Hugging Face tower has no pooled-only path.
        if pooled_only and not self.text_head.reads_tokens and isinstance(self.text, (TextTransformer, TextCommittee)):
            return self.text(ids, mask, pooled_only=True)
        return self.text(ids, mask)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters exempt from weight decay: norms, biases, embeddings, positions, scales."""
        names = set()
        for name, param in self.named_parameters():
            if param.ndim < 2 or "pos" in name or "embedding" in name or "cls_token" in name:
                names.add(name)
        return names
