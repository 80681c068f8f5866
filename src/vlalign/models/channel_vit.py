"""ChannelViT's patch embedding (Bao, Sivanandan, Karaletsos 2023, arXiv 2309.16108, §3.1).

Each single-channel P×P patch becomes its own token: for channel c and spatial patch n,
``z = W·x[c, p_n] + b + chn_c + pos_n``. ``W`` is one linear map tied across channels (the
reference's ``Conv3d(1, D, (1, P, P))``; tied beat untied in Table 9), ``chn_c`` is looked up by
the channel's *original* id so a subset keeps its meaning, and ``pos_n`` is shared by every
channel. Tokens are channel-major: all N patches of the first present channel, then the next.
It plugs into ``VisionTransformer`` like ``PatchEmbed``; the ViT adds the CLS token, which gets a
position but no channel embedding (§3.1).

Deviation from the reference: its ``interpolate_pos_encoding`` bicubically resamples the
positional grid whenever C > 1 (a DINO quirk, METHODS.md §1.7); here ``pos`` is simply repeated
for every channel.
"""

from __future__ import annotations

import torch
from torch import nn

from vlalign.models.channel_sampling import MISSING, resolve_channel_ids
from vlalign.models.positions import resample_positions
from vlalign.models.vit import PatchTokens


class ChannelPatchEmbed(nn.Module):
    def __init__(self, image_size: int, patch_size: int, num_channels: int, width: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.grid = image_size // patch_size
        self.num_patches = self.grid**2
        self.proj = nn.Linear(patch_size**2, width)  # one map for every channel
        self.channel_embedding = nn.Embedding(num_channels, width)
        self.pos = nn.Parameter(torch.zeros(1, self.num_patches, width))
        nn.init.trunc_normal_(self.channel_embedding.weight, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, images: torch.Tensor, channel_ids: torch.Tensor | None = None) -> PatchTokens:
        """images [B, C, H, W] (any C present channels), channel_ids [B, C] original ids or MISSING.

        Returns C·N tokens; the mask is None unless some image lacks a channel (MISSING), whose
        N tokens are then masked out of attention and pooling.
        """
        B, C, H, W = images.shape
        if H != W or H % self.patch_size:
            raise ValueError(f"images are {H}x{W}; this ChannelViT reads square images whose side is a multiple of "
                             f"its patch size {self.patch_size}")
        ids = resolve_channel_ids(images, channel_ids, self.num_channels)  # [B, C]
        P, g = self.patch_size, H // self.patch_size  # another size than trained: positions resampled
        N = g * g
        # [B, C, H, W] -> [B, C, N, P*P]: every single-channel patch, row-major within a channel
        patches = images.reshape(B, C, g, P, g, P).permute(0, 1, 2, 4, 3, 5).reshape(B, C, N, P * P)
        channel = self.channel_embedding(ids.clamp_min(0))  # [B, C, D]
        tokens = self.proj(patches) + channel[:, :, None] + resample_positions(self.pos, g)[:, None]  # [B, C, N, D]
        present = ids != MISSING  # [B, C]
        mask = None if present.all() else present[:, :, None].expand(B, C, N).reshape(B, C * N)
        return PatchTokens(tokens.reshape(B, C * N, -1), mask)  # channel-major [B, C*N, D]
