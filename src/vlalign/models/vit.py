"""Vision Transformer (Dosovitskiy et al. 2021) with an injected patch embedding.

The patch embedding is a component: ``PatchEmbed`` (one token per spatial patch, all channels
together) or ChannelViT's per-channel embedding. Either returns tokens that already carry their
positional (and channel) information; the ViT adds the CLS token and runs pre-LN blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.models.channel_sampling import fill_missing_channels, resolve_channel_ids
from vlalign.models.layers import Transformer, init_weights, padding_attn_mask
from vlalign.models.positions import resample_positions
from vlalign.models.token_merging import TokenMerging


@dataclass
class PatchTokens:
    tokens: torch.Tensor  # [B, T, D], position information already added
    mask: torch.Tensor | None = None  # [B, T] bool, True = real token (None: all real)


@dataclass
class VisionFeatures:
    pooled: torch.Tensor  # [B, D] CLS (or mean) after the final norm
    tokens: torch.Tensor | None  # [B, T, D] patch tokens after the final norm (CLS excluded); None if pooled_only
    mask: torch.Tensor | None  # [B, T] bool for the patch tokens, None when all are real
    intermediates: list[torch.Tensor]  # per block [B, 1+T, D], before the final norm (the last [B, 1, D] if pooled_only)
    token_sizes: torch.Tensor | None = None  # [B, T] patches each token stands for after token merging (None: 1)


class PatchEmbed(nn.Module):
    """Standard ViT patchify: each P×P×C patch -> one token (a strided conv written as one GEMM).

    Images of another size than ``image_size`` (a multiple of the patch size) get the position table
    resampled to their grid (``vlalign.models.positions``).

    A channel subset (fewer columns, or MISSING ids) is zero-filled and rescaled by C/|S| first,
    the plain-ViT protocol of ChannelViT (Bao et al. 2023 §4; see ``fill_missing_channels``).
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, width: int, bias: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.num_patches = self.grid**2
        # bias=False: CLIP's bias-free patch convolution (its weight [D, C, P, P] is ``proj.weight`` reshaped)
        self.proj = nn.Linear(in_channels * patch_size**2, width, bias=bias)
        self.pos = nn.Parameter(torch.zeros(1, self.num_patches, width))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, images: torch.Tensor, channel_ids: torch.Tensor | None = None) -> PatchTokens:
        ids = resolve_channel_ids(images, channel_ids, self.in_channels)  # [B, C]
        if ids.shape[1] != self.in_channels or not (ids == torch.arange(self.in_channels, device=ids.device)).all():
            images = fill_missing_channels(images, ids, self.in_channels)  # [B, in_channels, H, W]
        B, C, H, W = images.shape
        P = self.patch_size
        _check_square(H, W, P)
        # [B, C, H, W] -> [B, N, C*P*P], patches in row-major order
        patches = images.view(B, C, H // P, P, W // P, P).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * P * P)
        return PatchTokens(self.proj(patches) + resample_positions(self.pos, H // P))


def _check_square(height: int, width: int, patch: int) -> None:
    if height != width or height % patch:
        raise ValueError(f"images are {height}x{width}; this tower reads square images whose side is a multiple of "
                         f"its patch size {patch}")


class VisionTransformer(nn.Module):
    """``channel_sampler`` (optional) maps ``(images, channel_ids)`` to a channel subset before the
    patch embedding, e.g. ``HierarchicalChannelSampling`` (active in training mode only).
    ``token_merging`` (optional, ``TokenMerging``) merges similar tokens inside the blocks (ToMe), in
    training and at inference alike. ``ln_pre``: a LayerNorm on the embedded tokens before the first block
    (CLIP's ``ln_pre``, Radford et al. 2021 §2.4); ``activation``: the blocks' MLP non-linearity."""

    def __init__(self, patch_embed: nn.Module, width: int, depth: int, heads: int, mlp_ratio: float = 4.0,
                 pool: str = "cls", channel_sampler: nn.Module | None = None,
                 token_merging: TokenMerging | None = None, ln_pre: bool = False, activation: str = "gelu"):
        super().__init__()
        self.channel_sampler = channel_sampler
        self.token_merging = token_merging
        self.patch_embed = patch_embed
        self.width = width
        self.pool = pool
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, width))
        self.ln_pre = nn.LayerNorm(width) if ln_pre else None
        self.transformer = Transformer(width, depth, heads, mlp_ratio, activation)
        self.ln_post = nn.LayerNorm(width)
        init_weights(self.transformer)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    def forward(self, images: torch.Tensor, channel_ids: torch.Tensor | None = None,
                pooled_only: bool = False) -> VisionFeatures:
        """images [B, C, H, W]; channel_ids [B, C] original channel of each column (None: 0..C-1).
        ``pooled_only``: the caller needs ``pooled`` alone; with CLS pooling the last block then runs for
        the CLS token only (the same pooled feature, fewer FLOPs) and ``tokens`` is None."""
        if self.channel_sampler is not None:
            if channel_ids is None:
                channel_ids = torch.arange(images.shape[1], device=images.device).expand(images.shape[0], -1)
            images, channel_ids = self.channel_sampler(images, channel_ids)
        patches = self.patch_embed(images, channel_ids)
        B = patches.tokens.shape[0]
        cls = (self.cls_token + self.cls_pos).expand(B, -1, -1)
        x = torch.cat([cls, patches.tokens], dim=1)  # [B, 1+T, D]
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        attn_mask = None
        if patches.mask is not None:
            full = torch.cat([patches.mask.new_ones(B, 1), patches.mask], dim=1)
            attn_mask = padding_attn_mask(full)
        if pooled_only and self.pool == "cls" and self.token_merging is None:
            x, intermediates = self.transformer(x, attn_mask, last_rows=x.new_zeros(B, dtype=torch.long))
            return VisionFeatures(pooled=self.ln_post(x[:, 0]), tokens=None, mask=patches.mask,
                                  intermediates=intermediates)
        sizes = None
        if self.token_merging is None:
            x, intermediates = self.transformer(x, attn_mask)
        elif attn_mask is not None:
            raise ValueError("token merging needs every image to have all its tokens; these images have masked "
                             "tokens (missing channels). Set model.vision.merge_r=0 for such data.")
        else:
            x, intermediates, sizes = self.token_merging(self.transformer.blocks, x)
            sizes = sizes[:, 1:]  # [B, T] without CLS
        return self.finish(x, patches.mask, intermediates, sizes)

    def finish(self, hidden: torch.Tensor, patch_mask: torch.Tensor | None, intermediates: list[torch.Tensor],
               sizes: torch.Tensor | None = None) -> VisionFeatures:
        """Final norm and pooling of the last block's output ``hidden`` [B, 1+T, D] (CLS first); the fusion
        layers (``vlalign.models.fusion``) end their pass through the tower's top blocks here too. ``sizes``
        [B, T]: patches per token after ToMe merging (None: one each)."""
        x = self.ln_post(hidden)
        tokens = x[:, 1:]
        if self.pool == "cls":
            pooled = x[:, 0]
        elif sizes is not None:  # a merged token counts as many times as the patches it stands for
            pooled = (tokens * sizes.unsqueeze(-1)).sum(1) / sizes.sum(1, keepdim=True)
        elif patch_mask is None:
            pooled = tokens.mean(1)
        else:
            m = patch_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * m).sum(1) / m.sum(1).clamp_min(1)
        return VisionFeatures(pooled=pooled, tokens=tokens, mask=patch_mask, intermediates=intermediates,
                              token_sizes=sizes)
