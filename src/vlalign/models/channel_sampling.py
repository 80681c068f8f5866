"""Which channels an image has, and Hierarchical Channel Sampling (HCS) over them.

Every vision tower takes ``(images [B, C, H, W], channel_ids [B, C])``: column j of the images
holds the *original* channel ``channel_ids[:, j]``, and ``MISSING`` marks a column that a sample
does not have. A subset of channels is therefore just fewer columns (or MISSING ids), and each
patch embedding decides what a subset means for it (Bao et al. 2023, arXiv 2309.16108, §3.2/§4):
ChannelViT drops the tokens of absent channels; a plain ViT zero-fills them and rescales the
present ones (``fill_missing_channels``).

HCS (§3.2) is a component placed in front of the patch embedding: in training mode it draws
m ~ U{1..C}, then a uniform m-subset of the channels, and passes on only those. With a ChannelViT
embedding that is the reference ``hcs_channel_vit.py`` (tokens dropped, ids kept); with a plain
ViT embedding it is ``hcs_vit.py`` (dropped channels zeroed, kept ones scaled by C/m).
"""

from __future__ import annotations

import torch
from torch import nn

from vlalign.errors import ConfigError

MISSING = -1  # channel id of an absent column
SAMPLING_UNITS = ("batch", "sample")


def resolve_channel_ids(images: torch.Tensor, channel_ids: torch.Tensor | None, num_channels: int) -> torch.Tensor:
    """Check ``channel_ids`` against the images and the model; ``None`` means channels 0..C-1 in order.

    images: [B, C, H, W] -> [B, C] long ids in [0, num_channels) or MISSING.
    """
    B, C = images.shape[:2]
    if channel_ids is None:
        if C != num_channels:
            raise ValueError(f"images have {C} channels but the model takes {num_channels}; pass channel_ids [B, {C}] "
                             "naming the original channel of each column to feed a subset")
        return torch.arange(C, device=images.device).expand(B, C)
    if channel_ids.shape != (B, C):
        raise ValueError(f"channel_ids has shape {tuple(channel_ids.shape)}, expected {(B, C)} (one id per image "
                         "channel)")
    bad = (channel_ids < MISSING) | (channel_ids >= num_channels)
    if bad.any():
        raise ValueError(f"channel id {channel_ids[bad][0].item()} is outside 0..{num_channels - 1} (or {MISSING} for "
                         f"an absent channel); the model was built with in_channels={num_channels}")
    if not (channel_ids != MISSING).any(1).all():
        raise ValueError("an image has no present channel (every channel_id is MISSING); keep at least one")
    return channel_ids.long()


def fill_missing_channels(images: torch.Tensor, channel_ids: torch.Tensor, num_channels: int) -> torch.Tensor:
    """A plain ViT's view of a channel subset: absent channels zero, present ones scaled by C/|S|.

    Paper §4 / reference ``main_supervised_evalall.py``: ``scale = len(channels) / len(selected)``,
    the dropout-style rescaling that keeps the expected input sum of the first layer constant.
    images: [B, C', H, W], channel_ids: [B, C'] (checked) -> [B, num_channels, H, W].
    """
    B, _, H, W = images.shape
    present = channel_ids != MISSING  # [B, C']
    full = images.new_zeros(B, num_channels, H, W)
    # scatter_add, not scatter: MISSING columns all map to index 0 and must add nothing there.
    index = channel_ids.clamp_min(0)[:, :, None, None].expand(-1, -1, H, W)
    full.scatter_add_(1, index, images * present[:, :, None, None].to(images.dtype))
    scale = num_channels / present.sum(1).to(images.dtype)  # [B]
    return full * scale[:, None, None, None]


class HierarchicalChannelSampling(nn.Module):
    """HCS (§3.2), active only in training mode; in eval mode inputs pass through unchanged.

    ``per="batch"`` (the reference): one m and one subset for the whole batch; the images keep only
    the chosen columns, so a ChannelViT sees a shorter sequence (m·N tokens). ``per="sample"``: each
    image draws its own m and subset from the channels it has; the others are marked MISSING (the
    tensors keep their width, so a ChannelViT masks the dropped tokens instead of removing them).
    Randomness comes from torch's global generator, which checkpoints save and restore.
    """

    def __init__(self, per: str = "batch"):
        super().__init__()
        if per not in SAMPLING_UNITS:
            raise ConfigError(f"Channel sampling per '{per}' is not one of: {', '.join(SAMPLING_UNITS)}.")
        self.per = per

    def forward(self, images: torch.Tensor, channel_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return images, channel_ids
        return self._per_batch(images, channel_ids) if self.per == "batch" else self._per_sample(images, channel_ids)

    @staticmethod
    def _per_batch(images: torch.Tensor, channel_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if (channel_ids == MISSING).any():
            raise ValueError("per-batch channel sampling needs every channel present in every image; use "
                             "model.vision.channel_sampling_per=sample for inputs with missing channels")
        C = images.shape[1]
        m = int(torch.randint(1, C + 1, ()).item())  # m ~ U{1..C}
        keep = torch.randperm(C)[:m].sort().values.to(images.device)  # a uniform m-subset of the columns
        return images[:, keep], channel_ids[:, keep]

    @staticmethod
    def _per_sample(images: torch.Tensor, channel_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, C = channel_ids.shape
        present = channel_ids != MISSING  # [B, C]
        available = present.sum(1)  # [B]
        m = (torch.rand(B, device=images.device) * available).floor().long() + 1  # [B], m_b ~ U{1..C_b}
        # The m_b lowest of i.i.d. uniform scores over the present columns are a uniform m_b-subset.
        scores = torch.rand(B, C, device=images.device).masked_fill(~present, 2.0)
        rank = scores.argsort(1).argsort(1)  # [B, C] rank of each column's score within its row
        keep = rank < m[:, None]
        return images, channel_ids.masked_fill(~keep, MISSING)

    def extra_repr(self) -> str:
        return f"per={self.per}"
