"""Florence-VL's Depth-Breadth Fusion (Chen et al. 2024, arXiv 2412.04424; METHODS.md §4 row 44): the
language model reads vision features from several *depths* of the encoder and several *breadths*
(Florence-2's task prompts, each giving a different view of the image), concatenated along channels
per token and mapped by one MLP projector.

At small scale there are no task prompts: the breadth is a set of image views ("identity", "hflip",
"vflip") through the same tower. A flipped view's token grid is flipped back, so that token p of every
view describes the same image patch and channel concatenation lines them up (Florence-VL concatenates
features on one spatial grid). Every selected depth is passed through the tower's final LayerNorm, so
depths ``[-1]`` with view ``["identity"]`` is exactly the last-layer tokens LLaVA's connector reads.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vlalign.models.vit import VisionTransformer

VIEWS = ("identity", "hflip", "vflip")


def _flip(x: Tensor, view: str, dim_h: int, dim_w: int) -> Tensor:
    """Apply (or undo: flips are involutions) ``view`` to the two spatial dims of ``x``."""
    if view == "hflip":
        return x.flip(dim_w)
    if view == "vflip":
        return x.flip(dim_h)
    return x


class DepthBreadthFeatures(nn.Module):
    """``vision`` tokens of blocks ``depths`` (Python indices into the tower's blocks, -1 = last) for each of
    ``views``, concatenated per patch: [B, C, H, W] -> [B, P, D · len(depths) · len(views)] (view-major)."""

    def __init__(self, depths: list[int], views: list[str]):
        super().__init__()
        if not depths or not views:
            raise ValueError(f"depth-breadth fusion needs at least one depth and one view, got {depths} and {views}")
        unknown = [v for v in views if v not in VIEWS]
        if unknown or len(set(views)) != len(views) or len(set(depths)) != len(depths):
            raise ValueError(f"views {views} / depths {depths}: name each once; views from {', '.join(VIEWS)}")
        self.depths, self.views = list(depths), list(views)

    def multiplier(self) -> int:
        """How many tower widths each output token holds."""
        return len(self.depths) * len(self.views)

    def forward(self, vision: VisionTransformer, images: Tensor,
                channel_ids: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """-> fused tokens [B, P, D·k] and the patch mask [B, P] (None when all are real)."""
        parts, mask = [], None
        for view in self.views:
            features = vision(_flip(images, view, -2, -1), channel_ids)
            num_blocks = len(features.intermediates)
            if any(not -num_blocks <= d < num_blocks for d in self.depths):
                raise ValueError(f"depths {self.depths} index a tower of {num_blocks} blocks")
            mask = features.mask
            for depth in self.depths:
                tokens = vision.ln_post(features.intermediates[depth][:, 1:])  # [B, P, D] without CLS
                parts.append(self._unflip(tokens, view))
        return torch.cat(parts, dim=-1), mask  # [B, P, D·k]

    @staticmethod
    def _unflip(tokens: Tensor, view: str) -> Tensor:
        """Put a flipped view's tokens back on the identity view's grid (row-major square grid)."""
        if view == "identity":
            return tokens
        batch, count, width = tokens.shape
        grid = math.isqrt(count)
        if grid * grid != count:
            raise ValueError(f"flipped views need a square patch grid; got {count} tokens (ChannelViT tokens?)")
        return _flip(tokens.view(batch, grid, grid, width), view, 1, 2).reshape(batch, count, width)
