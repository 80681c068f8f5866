"""Cross-modal fusion of the two towers' features: FIBER's fusion in the backbone.

A fusion module maps aligned rows of unimodal features (row p of the vision features pairs with row p of
the text features) to ``FusedFeatures``, one fused image and one fused text per pair. It reads the
towers' per-block ``intermediates``, so the unimodal pass that gives the contrastive embeddings is
computed once and the fused pass starts from it. ``vlalign.models.manager`` holds the other kind
(ManagerTower's cross-modal layers); ``vlalign.models.cross_modal`` picks the pairs and the heads.

FIBER (Dou et al. 2022, "Coarse-to-Fine Vision-Language Pre-training with Fusion in the Backbone",
§3.1): the top K blocks of both towers get a cross-attention into the other tower between their
self-attention and MLP, scaled by a learned gate that starts at 0, so training starts from the plain
dual encoder (microsoft/FIBER ``roberta.py``: ``alpha`` initialised to 0; we gate with tanh(α) as
Flamingo does, which is the same at 0 and bounds the gate). Both directions of a layer read the
other tower's input to that layer (FIBER ``fiber_module.py`` updates both streams together).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.models.layers import init_weights, padding_attn_mask
from vlalign.models.text import TextFeatures, TextTransformer
from vlalign.models.vit import VisionFeatures, VisionTransformer


@dataclass
class FusedFeatures:
    image_tokens: torch.Tensor  # [P, T, Dv] fused patch tokens (no CLS), after a final norm
    image_pooled: torch.Tensor  # [P, Dv]
    image_mask: torch.Tensor | None  # [P, T] bool, None when every patch is real
    text_tokens: torch.Tensor  # [P, L, Dt] fused text tokens, after a final norm
    text_pooled: torch.Tensor  # [P, Dt]
    text_mask: torch.Tensor  # [P, L] bool, True = real token


class CrossAttention(nn.Module):
    """Queries from one stream ``x`` [B, N, D], keys and values from the other ``other`` [B, M, Do];
    both are layer-normed first (pre-LN). Masked keys (``other_mask`` False) are never attended to."""

    def __init__(self, width: int, other_width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"cross-attention width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.ln_query = nn.LayerNorm(width)
        self.ln_other = nn.LayerNorm(other_width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(other_width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, other: torch.Tensor, other_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        M, h = other.shape[1], self.heads
        q = self.q(self.ln_query(x)).view(B, N, h, D // h).transpose(1, 2)  # [B, h, N, D/h]
        k, v = self.kv(self.ln_other(other)).view(B, M, 2, h, D // h).permute(2, 0, 3, 1, 4)  # 2 x [B, h, M, D/h]
        attn_mask = None if other_mask is None else other_mask[:, None, None, :]  # [B, 1, 1, M]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class GatedCrossAttention(nn.Module):
    """x + tanh(α)·CrossAttention(x, other), α a scalar that starts at ``gate_init`` (at 0 the layer is the identity)."""

    def __init__(self, width: int, other_width: int, heads: int, gate_init: float = 0.0):
        super().__init__()
        self.attn = CrossAttention(width, other_width, heads)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, x: torch.Tensor, other: torch.Tensor, other_mask: torch.Tensor | None = None) -> torch.Tensor:
        return x + torch.tanh(self.gate) * self.attn(x, other, other_mask)


class FiberFusion(nn.Module):
    """Gated cross-attention in the top ``num_layers`` blocks of both towers (FIBER §3.1).

    The towers' own blocks run the fused pass (they are passed to ``forward``, not owned, so their
    weights are shared with the unimodal pass and stored once). It starts from the intermediates the
    unimodal pass left at the input of block depth-K, so K must be below both towers' depths.
    """

    def __init__(self, vision_width: int, vision_heads: int, text_width: int, text_heads: int, num_layers: int,
                 gate_init: float = 0.0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"FIBER fuses at least one block per tower, got num_layers={num_layers}")
        self.num_layers = num_layers
        self.image_to_text = nn.ModuleList(GatedCrossAttention(vision_width, text_width, vision_heads, gate_init)
                                           for _ in range(num_layers))
        self.text_to_image = nn.ModuleList(GatedCrossAttention(text_width, vision_width, text_heads, gate_init)
                                           for _ in range(num_layers))
        for module in (*self.image_to_text, *self.text_to_image):
            init_weights(module.attn)

    def forward(self, vision_tower: VisionTransformer, text_tower: TextTransformer, vision: VisionFeatures,
                text: TextFeatures) -> FusedFeatures:
        K = self.num_layers
        depth = min(len(vision_tower.transformer.blocks), len(text_tower.transformer.blocks))
        if K >= depth:
            raise ValueError(f"FIBER fuses the top num_layers={K} blocks and starts from the block below them; "
                             f"the shallower tower has {depth} blocks, so num_layers must be below {depth}")
        image = vision.intermediates[-K - 1]  # [P, 1+T, Dv]: the input of the first fused block
        words = text.intermediates[-K - 1]  # [P, L, Dt]
        image_keys = cls_key_mask(vision.mask, image)  # [P, 1+T] bool or None
        # The same self-attention masks as the towers' own forward passes.
        image_attn = None if image_keys is None else padding_attn_mask(image_keys)
        text_attn = padding_attn_mask(text.mask, causal=text_tower.pool == "eot")
        blocks = zip(vision_tower.transformer.blocks[-K:], text_tower.transformer.blocks[-K:], self.image_to_text,
                     self.text_to_image)
        for image_block, text_block, image_cross, text_cross in blocks:
            image_in, words_in = image, words
            image = image_block(image_in, image_attn, cross=functools.partial(image_cross, other=words_in,
                                                                              other_mask=text.mask))
            words = text_block(words_in, text_attn, cross=functools.partial(text_cross, other=image_in,
                                                                            other_mask=image_keys))
        fused_image = vision_tower.finish(image, vision.mask, [])
        fused_text = text_tower.finish(words, text.mask, [])
        return FusedFeatures(fused_image.tokens, fused_image.pooled, fused_image.mask, fused_text.tokens,
                             fused_text.pooled, fused_text.mask)

    def gates(self) -> dict[str, float]:
        """tanh(α) of every layer, for logs: how far each direction has opened."""
        out = {f"image_to_text/{i}": torch.tanh(m.gate).item() for i, m in enumerate(self.image_to_text)}
        return out | {f"text_to_image/{i}": torch.tanh(m.gate).item() for i, m in enumerate(self.text_to_image)}


def cls_key_mask(patch_mask: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor | None:
    """Key mask [P, 1+T] of a ViT hidden state (CLS always real), or None when every patch is real."""
    if patch_mask is None:
        return None
    return torch.cat([patch_mask.new_ones(hidden.shape[0], 1), patch_mask], dim=1)


def trim_padding(text: TextFeatures) -> TextFeatures:
    """The token columns up to the last real token of any row. Padding is never attended to nor pooled,
    so the trailing columns that are padding in every row change no fused feature; they only cost."""
    used = int(text.mask.any(0).nonzero().max()) + 1 if text.mask.any() else 1
    return TextFeatures(text.pooled, text.tokens[:, :used], text.mask[:, :used],
                        [h[:, :used] for h in text.intermediates])


def select_rows(features: VisionFeatures | TextFeatures, index: torch.Tensor) -> VisionFeatures | TextFeatures:
    """The rows ``index`` [P] of every tensor in ``features`` (intermediates included)."""
    return dataclasses.replace(features, **{f.name: _take(getattr(features, f.name), index)
                                            for f in dataclasses.fields(features)})


def concat_rows(parts: list[VisionFeatures] | list[TextFeatures]) -> VisionFeatures | TextFeatures:
    """Features of several batches as one (rows in order)."""
    first = parts[0]
    return dataclasses.replace(first, **{f.name: _cat([getattr(p, f.name) for p in parts])
                                         for f in dataclasses.fields(first)})


def _take(value, index: torch.Tensor):
    if value is None:
        return None
    if isinstance(value, list):
        return [v[index] for v in value]
    return value[index]


def _cat(values: list):
    if values[0] is None:
        return None
    if isinstance(values[0], list):
        return [torch.cat(layer) for layer in zip(*values)]
    return torch.cat(values)
