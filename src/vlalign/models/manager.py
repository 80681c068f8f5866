"""ManagerTower (Xu et al. 2023, "ManagerTower: Aggregating the Insights of Uni-Modal Experts for
Vision-Language Representation Learning"): cross-modal layers on top of the two towers, where a
"manager" before each layer mixes several unimodal layers into that layer's input.

The static manager (SAUE, §3.2; LooperXX/ManagerTower ``heads.py``): each of the top N unimodal layer
outputs gets its own LayerNorm, and they are summed with softmax-normalised learned weights; from the
second cross-modal layer on, the previous cross-modal output joins the sum with its own LayerNorm and
a learned (not softmaxed) weight. N = 1 is the last-layer-only design (METER) the paper compares against.
Left out of the reference: its layer and token-type embeddings and the noise it adds to the manager
weights during training; the adaptive manager (AAUE).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from vlalign.models.fusion import CrossAttention, FusedFeatures, cls_key_mask
from vlalign.models.layers import Block, init_weights, padding_attn_mask
from vlalign.models.text import TextFeatures, TextTransformer
from vlalign.models.vit import VisionFeatures, VisionTransformer


class Manager(nn.Module):
    """Σ_i softmax(w)_i · LN_i(U_i) over ``num_managed`` unimodal layers [P, S, D] each, plus
    w_prev · LN(C) of the previous cross-modal output C when ``with_previous``."""

    def __init__(self, width: int, num_managed: int, with_previous: bool):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(num_managed))
        self.layer_logits = nn.Parameter(torch.zeros(num_managed))  # softmax: equal weights at start, as SAUE
        self.previous_norm = nn.LayerNorm(width) if with_previous else None
        self.previous_weight = nn.Parameter(torch.ones(())) if with_previous else None

    def weights(self) -> torch.Tensor:
        """[N] the softmax weights over the managed layers, oldest first."""
        return self.layer_logits.softmax(0)

    def forward(self, layers: list[torch.Tensor], previous: torch.Tensor | None) -> torch.Tensor:
        weights = self.weights()
        mixed = sum(w * norm(layer) for w, norm, layer in zip(weights, self.norms, layers))  # [P, S, D]
        if self.previous_norm is not None:
            mixed = mixed + self.previous_weight * self.previous_norm(previous)
        return mixed


class CrossModalLayer(nn.Module):
    """One stream of a co-attention layer (METER/BridgeTower, pre-LN): bidirectional self-attention,
    cross-attention into the other stream, MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.block = Block(width, heads)
        self.cross = CrossAttention(width, width, heads)

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None, other: torch.Tensor,
                other_keys: torch.Tensor | None) -> torch.Tensor:
        attn_mask = None if keys is None else padding_attn_mask(keys)
        return self.block(x, attn_mask, cross=functools.partial(self._cross, other=other, other_keys=other_keys))

    def _cross(self, x: torch.Tensor, other: torch.Tensor, other_keys: torch.Tensor | None) -> torch.Tensor:
        return x + self.cross(x, other, other_keys)


class ManagerFusion(nn.Module):
    """``num_layers`` cross-modal layers of width ``width``; the managers of the image (text) stream mix
    the top ``num_managed_vision`` (``num_managed_text``) blocks of the vision (text) tower, each first
    mapped to ``width`` by one shared linear map per tower (ManagerTower's cross-modal transforms).
    The pooled features are the image stream's CLS token and the text stream pooled as the text tower pools
    (its EOS token for a causal tower: a causal tower's BOS state is the same for every text)."""

    def __init__(self, vision_width: int, text_width: int, width: int, heads: int, num_layers: int,
                 num_managed_vision: int, num_managed_text: int):
        super().__init__()
        if num_layers < 1 or num_managed_vision < 1 or num_managed_text < 1:
            raise ValueError(f"ManagerTower needs at least one cross-modal layer and one managed layer per tower, got "
                             f"num_layers={num_layers}, managed {num_managed_vision} (vision), {num_managed_text} (text)")
        self.num_managed_vision, self.num_managed_text = num_managed_vision, num_managed_text
        self.image_in = nn.Linear(vision_width, width)
        self.text_in = nn.Linear(text_width, width)
        self.image_managers = nn.ModuleList(Manager(width, num_managed_vision, i > 0) for i in range(num_layers))
        self.text_managers = nn.ModuleList(Manager(width, num_managed_text, i > 0) for i in range(num_layers))
        self.image_layers = nn.ModuleList(CrossModalLayer(width, heads) for _ in range(num_layers))
        self.text_layers = nn.ModuleList(CrossModalLayer(width, heads) for _ in range(num_layers))
        self.image_norm = nn.LayerNorm(width)
        self.text_norm = nn.LayerNorm(width)
        for module in (self.image_in, self.text_in, *self.image_layers, *self.text_layers):
            init_weights(module)

    def forward(self, vision_tower: VisionTransformer, text_tower: TextTransformer, vision: VisionFeatures,
                text: TextFeatures) -> FusedFeatures:
        for name, managed, intermediates in (("vision", self.num_managed_vision, vision.intermediates),
                                             ("text", self.num_managed_text, text.intermediates)):
            if managed > len(intermediates):
                raise ValueError(f"the managers mix the top {managed} layers of the {name} tower, which has "
                                 f"{len(intermediates)}")
        image_layers = [self.image_in(h) for h in vision.intermediates[-self.num_managed_vision:]]  # [P, 1+T, D] each
        text_layers = [self.text_in(h) for h in text.intermediates[-self.num_managed_text:]]  # [P, L, D] each
        image_keys = cls_key_mask(vision.mask, image_layers[0])
        image = words = None
        for image_manager, text_manager, image_layer, text_layer in zip(
                self.image_managers, self.text_managers, self.image_layers, self.text_layers):
            image_in, words_in = image_manager(image_layers, image), text_manager(text_layers, words)
            image = image_layer(image_in, image_keys, words_in, text.mask)
            words = text_layer(words_in, text.mask, image_in, image_keys)
        image, words = self.image_norm(image), self.text_norm(words)
        return FusedFeatures(image[:, 1:], image[:, 0], vision.mask, words, text_tower.pool_tokens(words, text.mask),
                             text.mask)
