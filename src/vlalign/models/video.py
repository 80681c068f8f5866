"""Video tower: a ViT that reads clips ``[B, T_in, C, H, W]`` and returns one feature per clip.

The pipeline, each stage a component chosen by ``model.video`` (``vlalign.models.factory``):

1. ``FrameSampler``: T of the T_in frames, at the centres of T equal segments ("uniform"), or one random
   frame per segment while training ("random", TSN-style segment sampling; Wang et al. 2016).
2. ``SlowFastRouter`` (optional, Keye-VL 1.5's Slow-Fast encoding): a frame whose patches differ from the
   last kept slow frame goes to the slow pathway at full resolution; a near-static frame to the fast
   pathway at 1/``scale`` of the resolution (``scale``² fewer patch tokens).
3. The ViT encodes the frames of each pathway (one batch per resolution; ``resample_positions``
   adapts the position embeddings to the smaller grid).
4. Frame tokens: the pooled feature of each frame ("frame", [B, T, D]), or PLLaVA's parameter-free
   adaptive average pooling of the patch tokens to a fixed (T', h', w') grid ("pllava", [B, T'h'w', D]).
5. ``MeanPool`` (order-free) or ``AttentionPool`` (learned positions and one attention block over the
   tokens, then their mean; CLIP4Clip's "seqTransf") -> the clip feature [B, D].

With ``MaskedVideoModelling`` (E-ViLM), training also encodes a copy of the frames with random patches
blanked and predicts each blanked patch's code from a frozen VQ tokenizer (``vlalign.models.vq``).

The tower subclasses ``VisionTransformer`` so its weights keep the names of an image tower: an image
CLIP run's ``vision.*`` initialises it (``model.init_from``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.models.layers import Block, init_weights
from vlalign.models.vit import VisionFeatures, VisionTransformer
from vlalign.models.vq import PatchVQTokenizer, patchify

SAMPLING = ("uniform", "random")


@dataclass
class VideoFeatures(VisionFeatures):
    slow: torch.Tensor | None = None  # [B, T] bool: frame encoded at full resolution
    patch_tokens: int = 0  # patch tokens the ViT encoded for this batch's clips (the cost Slow-Fast cuts)
    mvm_logits: torch.Tensor | None = None  # [M, K] code logits of the M masked patches (training with MVM)
    mvm_targets: torch.Tensor | None = None  # [M] their VQ codes


class FrameSampler(nn.Module):
    def __init__(self, num_frames: int, mode: str = "uniform"):
        super().__init__()
        if num_frames < 1 or mode not in SAMPLING:
            raise ValueError(f"frame sampling needs num_frames >= 1 and mode in {SAMPLING}, got {num_frames}, {mode!r}")
        self.num_frames, self.mode = num_frames, mode

    def indices(self, total: int, batch: int, device: torch.device | None = None) -> torch.Tensor:
        """[B, T] frame indices in increasing order. Segment k covers frames [k*total/T, (k+1)*total/T)."""
        k = torch.arange(self.num_frames, device=device, dtype=torch.float64)
        if self.mode == "random" and self.training:
            start = torch.floor(k * total / self.num_frames)
            end = torch.maximum(torch.floor((k + 1) * total / self.num_frames), start + 1)
            u = torch.rand(batch, self.num_frames, dtype=torch.float64).to(k.device)
            return (start + torch.floor(u * (end - start))).long().clamp_max(total - 1)
        centres = torch.floor((k + 0.5) * total / self.num_frames).long()
        return centres.expand(batch, -1)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """[B, T_in, C, H, W] -> [B, T, C, H, W]."""
        B, total = videos.shape[:2]
        index = self.indices(total, B, videos.device)  # [B, T]
        return videos[torch.arange(B, device=videos.device)[:, None], index]


def patch_similarity(frames: torch.Tensor, reference: torch.Tensor, patch_size: int, tolerance: float) -> torch.Tensor:
    """Fraction of patches whose mean absolute pixel difference to ``reference`` is at most ``tolerance``.
    frames, reference: [B, C, H, W] -> [B]."""
    diff = patchify((frames - reference).abs(), patch_size).mean(-1)  # [B, N]
    return (diff <= tolerance).float().mean(1)


class SlowFastRouter(nn.Module):
    """Keye-VL 1.5 (Yang et al. 2025, §2 "Slow-Fast video encoding"): the first frame is slow; each later
    frame is compared with the latest slow frame, and is fast when more than ``threshold`` of its patches
    are unchanged (the paper's 95%), else it becomes the new slow frame. Keye gives a fast frame 30% of a
    slow frame's tokens; here a fast frame is encoded at 1/``scale`` resolution (scale 2: 25%)."""

    def __init__(self, patch_size: int, threshold: float = 0.95, tolerance: float = 0.05, scale: int = 2):
        super().__init__()
        self.patch_size, self.threshold, self.tolerance, self.scale = patch_size, threshold, tolerance, scale

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, T, C, H, W] normalised pixels -> [B, T] bool, True = slow (full resolution)."""
        B, T = frames.shape[:2]
        slow = torch.zeros(B, T, dtype=torch.bool, device=frames.device)
        slow[:, 0] = True
        reference = frames[:, 0]  # [B, C, H, W] the latest slow frame of each clip
        for t in range(1, T):
            similar = patch_similarity(frames[:, t], reference, self.patch_size, self.tolerance) > self.threshold
            slow[:, t] = ~similar
            reference = torch.where(slow[:, t, None, None, None], frames[:, t], reference)
        return slow


def adaptive_token_pool(grids: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """PLLaVA (Xu et al. 2024, §3.2): parameter-free adaptive average pooling of frame features over time and
    space. grids [B, T, h, w, D] -> [B, T', h', w', D] with (T', h', w') = ``size``."""
    x = grids.permute(0, 4, 1, 2, 3)  # [B, D, T, h, w]
    return F.adaptive_avg_pool3d(x, size).permute(0, 2, 3, 4, 1)


class MeanPool(nn.Module):
    """The mean of the tokens: order-free, so a clip and its reverse get one feature."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(1)  # [B, S, D] -> [B, D]


class AttentionPool(nn.Module):
    """Order-aware pooling (CLIP4Clip's "seqTransf", Luo et al. 2022 §3.3): learned positions for the S tokens,
    one pre-LN attention block over them, then the mean, normalised. The block starts near the identity
    (small weights, residual), so the pool starts as the mean pool and learns what order adds: a learned
    query read-out instead (tried first) starts from a constant and collapsed the clip features."""

    def __init__(self, width: int, heads: int, num_tokens: int):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, num_tokens, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.block = Block(width, heads)
        init_weights(self.block)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.block(tokens + self.pos).mean(1))  # [B, S, D] -> [B, D]


class MaskedVideoModelling(nn.Module):
    """E-ViLM's MVM: blank a random ``mask_ratio`` of each frame's patches (pixels set to 0, the normalised
    mid-grey; E-ViLM swaps in a learned [MASK] embedding instead) and classify each blanked patch's token
    into the frozen tokenizer's codes."""

    def __init__(self, tokenizer: PatchVQTokenizer, width: int, mask_ratio: float):
        super().__init__()
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio={mask_ratio} must be in (0, 1)")
        self.tokenizer = tokenizer.requires_grad_(False)
        self.head = nn.Linear(width, tokenizer.num_codes)
        self.mask_ratio = mask_ratio

    def mask(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [n, C, H, W] -> (masked frames, mask [n, N] bool); at least one patch per frame."""
        P = self.tokenizer.patch_size
        n, _, H, W = frames.shape
        scores = torch.rand(n, (H // P) * (W // P)).to(frames.device)
        keep = max(1, round(self.mask_ratio * scores.shape[1]))
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(keep, 1).indices, True)
        pixels = mask.view(n, 1, H // P, 1, W // P, 1).expand(-1, 1, -1, P, -1, P).reshape(n, 1, H, W)
        return frames.masked_fill(pixels, 0.0), mask


class VideoTransformer(VisionTransformer):
    """``forward(videos [B, T_in, C, H, W])`` -> ``VideoFeatures`` with ``pooled`` [B, D] (the clip) and
    ``tokens`` [B, S, D] (the frame tokens the temporal pool read). See the module docstring."""

    def __init__(self, *vit_args, sampler: FrameSampler, temporal_pool: nn.Module,
                 pool_grid: tuple[int, int, int] | None = None, router: SlowFastRouter | None = None,
                 mvm: MaskedVideoModelling | None = None, **vit_kwargs):
        super().__init__(*vit_args, **vit_kwargs)
        self.sampler, self.temporal_pool, self.router, self.mvm = sampler, temporal_pool, router, mvm
        self.pool_grid = pool_grid  # (T', h', w') for PLLaVA pooling; None: one pooled feature per frame

    def forward(self, videos: torch.Tensor, channel_ids: torch.Tensor | None = None,
                pooled_only: bool = False) -> VideoFeatures:
        if videos.ndim != 5:
            raise ValueError(f"the video tower reads clips [B, T, C, H, W], got a tensor of shape "
                             f"{tuple(videos.shape)}; use a video source (e.g. moving-shapes:...) with model.video")
        frames = self.sampler(videos)  # [B, T, C, H, W]
        B, T = frames.shape[:2]
        ids = None if channel_ids is None else channel_ids.repeat_interleave(T, 0)  # [B*T, C]
        slow = (self.router(frames) if self.router is not None
                else torch.ones(B, T, dtype=torch.bool, device=frames.device))  # [B, T]
        tokens, cost = self._frame_tokens(frames, slow, ids)  # [B, S, D]
        out = VideoFeatures(pooled=self.temporal_pool(tokens), tokens=tokens, mask=None, intermediates=[],
                            slow=slow, patch_tokens=cost)
        if self.mvm is not None and self.training:
            out.mvm_logits, out.mvm_targets = self._masked_modelling(frames.flatten(0, 1), ids)
        return out

    def _frame_tokens(self, frames: torch.Tensor, slow: torch.Tensor,
                      ids: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """Encode each pathway's frames at its resolution -> (frame tokens [B, S, D], patch tokens encoded)."""
        B, T = frames.shape[:2]
        flat, route = frames.flatten(0, 1), slow.flatten()  # [B*T, C, H, W], [B*T]
        h, w = self.pool_grid[1:] if self.pool_grid else (1, 1)
        per_frame = flat.new_zeros(B * T, h, w, self.width)  # [B*T, h', w', D]
        cost = 0
        for is_slow in (True, False):
            chosen = (route == is_slow).nonzero()[:, 0]
            if chosen.numel() == 0:
                continue
            x = flat[chosen]
            if not is_slow:
                x = F.interpolate(x, scale_factor=1 / self.router.scale, mode="area")
            features = super().forward(x, None if ids is None else ids[chosen], pooled_only=self.pool_grid is None)
            grid = (x.shape[-2] // self.patch_embed.patch_size, x.shape[-1] // self.patch_embed.patch_size)
            cost += chosen.numel() * grid[0] * grid[1]
            if self.pool_grid is None:
                per_frame = per_frame.index_put((chosen,), features.pooled[:, None, None])
            else:  # PLLaVA's spatial pooling, per pathway: both resolutions land on the same (h', w') grid
                patches = features.tokens.reshape(-1, *grid, self.width)  # [n, rows, cols, D]
                pooled = F.adaptive_avg_pool2d(patches.permute(0, 3, 1, 2), (h, w)).permute(0, 2, 3, 1)
                per_frame = per_frame.index_put((chosen,), pooled)
        grids = per_frame.view(B, T, h, w, self.width)
        if self.pool_grid is None:
            return grids.view(B, T, self.width), cost
        # Temporal step of the adaptive pooling; space is already at (h', w'), so this equals one 3-D pool.
        return adaptive_token_pool(grids, (self.pool_grid[0], h, w)).flatten(1, 3), cost

    def _masked_modelling(self, frames: torch.Tensor, ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        targets = self.mvm.tokenizer.encode(frames)  # [n, N]
        masked, mask = self.mvm.mask(frames)
        tokens = super().forward(masked, ids).tokens  # [n, N, D]
        return self.mvm.head(tokens[mask]), targets[mask]  # [M, K], [M]
