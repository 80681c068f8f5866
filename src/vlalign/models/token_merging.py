"""Token merging in the ViT (ToMe: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023), the
way SimVLG trains on ever fewer visual tokens (Jian et al. 2023; METHODS.md §4 row 45).

In block l, between the attention and the MLP, the ``r_l`` most similar token pairs are merged, so the
sequence shrinks by ``r_l`` tokens per block (ToMe §3):

1. bipartite soft matching: tokens alternate into sets A (even positions) and B (odd positions);
   each A token finds its most similar B token by the cosine similarity of the attention keys (mean
   over heads); the ``r`` A tokens with the best matches are merged into them. The CLS token is
   token 0 (in A) and never moves, and no token merges into it, since it is in A.
2. a merged token is the size-weighted mean of its members, where the size counts the patches it
   stands for;
3. proportional attention: later blocks add log(size) to the attention logits, so a token that
   stands for s patches gets the attention weight that s separate copies would get.

The matching is chosen without gradients (as in ToMe); the merge itself is differentiable.
Merged tokens come out as [unmerged A in their original order (CLS first), then all of B].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Match:
    """Which tokens of A merge into which tokens of B (indices into A = x[:, ::2] and B = x[:, 1::2])."""

    kept: torch.Tensor  # [B, Ta - r] A tokens that stay, ascending (the CLS token first)
    src: torch.Tensor  # [B, r] A tokens merged away
    dst: torch.Tensor  # [B, r] the B token each of them merges into


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Match:
    """metric [B, T, d] (keys averaged over heads; token 0 is CLS) -> the r best A->B merges (ToMe §3)."""
    with torch.no_grad():
        metric = F.normalize(metric, dim=-1)
        a, b = metric[:, ::2], metric[:, 1::2]
        scores = a @ b.transpose(1, 2)  # [B, Ta, Tb] cosine similarity
        scores[:, 0] = -torch.inf  # CLS is never merged away
        best, best_dst = scores.max(dim=-1)  # [B, Ta]
        order = best.argsort(dim=-1, descending=True, stable=True)  # strongest matches first
        src = order[:, :r]
        return Match(kept=order[:, r:].sort(dim=-1).values, src=src, dst=best_dst.gather(1, src))


def merge_sum(x: torch.Tensor, match: Match) -> torch.Tensor:
    """x [B, T, C] -> [B, T - r, C]: each merged A token is added to its B token."""
    C = x.shape[-1]
    a, b = x[:, ::2], x[:, 1::2]
    kept = a.gather(1, match.kept[..., None].expand(-1, -1, C))
    moved = a.gather(1, match.src[..., None].expand(-1, -1, C))
    b = b.scatter_add(1, match.dst[..., None].expand(-1, -1, C), moved)
    return torch.cat([kept, b], dim=1)


def merge_weighted(x: torch.Tensor, sizes: torch.Tensor, match: Match) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average of merged tokens: x [B, T, D], sizes [B, T, 1] -> ([B, T-r, D], [B, T-r, 1])."""
    sizes_out = merge_sum(sizes, match)
    return merge_sum(x * sizes, match) / sizes_out, sizes_out


def max_merge(num_tokens: int) -> int:
    """The most tokens one block can merge: every A token but CLS, (T - 1) // 2 of T tokens."""
    return (num_tokens - 1) // 2


class MergeStep:
    """The merge of one block: called by ``Block.forward`` with (x, keys); keeps the new sizes."""

    def __init__(self, r: int, sizes: torch.Tensor | None):
        self.r, self.sizes = r, sizes

    def __call__(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        match = bipartite_soft_matching(keys.mean(dim=1), self.r)  # keys [B, heads, T, d] -> [B, T, d]
        sizes = self.sizes if self.sizes is not None else x.new_ones(x.shape[0], x.shape[1], 1)
        x, self.sizes = merge_weighted(x, sizes, match)
        return x


class TokenMerging(nn.Module):
    """Runs a stack of blocks, merging ``schedule[l]`` tokens in block l (no parameters)."""

    def __init__(self, schedule: Sequence[int]):
        super().__init__()
        self.schedule = list(schedule)

    def forward(self, blocks: nn.ModuleList, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """x [B, 1+N, D] (CLS first) -> (x [B, 1+N-sum(r), D], per-block outputs, sizes [B, 1+N-sum(r)])."""
        if len(blocks) != len(self.schedule):
            raise ValueError(f"the merge schedule has {len(self.schedule)} entries for {len(blocks)} blocks")
        sizes = None  # [B, T, 1]; None while every token is one patch (no proportional attention needed)
        intermediates = []
        for block, r in zip(blocks, self.schedule):
            if r > max_merge(x.shape[1]):
                raise ValueError(f"cannot merge {r} of {x.shape[1]} tokens in one block; at most "
                                 f"{max_merge(x.shape[1])}")
            bias = None if sizes is None else sizes.log().transpose(1, 2)[:, None]  # [B, 1, 1, T]: + log(size)
            step = MergeStep(r, sizes) if r > 0 else None
            x = block(x, bias, False, merge=step)
            if step is not None:
                sizes = step.sizes
            intermediates.append(x)
        sizes = sizes[..., 0] if sizes is not None else x.new_ones(x.shape[:2])
        return x, intermediates, sizes


def merge_schedule(r: int, schedule: Sequence[int], depth: int, num_tokens: int) -> list[int]:
    """The per-block merge counts: ``schedule`` if given (one per block), else ``r`` in every block.

    Raises ValueError when a count is negative or more than a block can merge (``max_merge``).
    """
    counts = list(schedule) if schedule else [r] * depth
    if len(counts) != depth:
        raise ValueError(f"model.vision.merge_schedule has {len(counts)} entries; the vision tower has {depth} "
                         "blocks: give one count per block")
    tokens = num_tokens
    for layer, count in enumerate(counts):
        if count < 0 or count > max_merge(tokens):
            raise ValueError(f"block {layer} would merge {count} tokens, but it receives {tokens} (with CLS) and "
                             f"can merge 0 to {max_merge(tokens)}; lower model.vision.merge_r or the schedule")
        tokens -= count
    return counts
