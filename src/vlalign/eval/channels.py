"""Accuracy on channel subsets: the ChannelViT evaluation protocol (Bao et al. 2023 §4, METHODS.md §1.5).

A model trained on C channels is tested with only a subset S of them. The tower decides what a
subset means (``vlalign.models.channel_sampling``): a ChannelViT receives just the |S| present
channels with their original ids; a plain ViT receives them zero-filled to C and scaled by C/|S|.
Results are reported per subset (named by its channels joined with "+") and averaged per size.

Which subsets (``channel_subsets``): all 2^C - 1 non-empty subsets when C <= 8 (the paper's
protocol: 31 for 5 channels, 255 for 8). Above 8 channels (13 Sentinel-2 bands: 8191 subsets) the
rule is: every subset of size 1, 2, C-1 and C (single bands, pairs, leave-one-out, full), and for
each other size ``SAMPLED_PER_SIZE`` distinct subsets drawn with a fixed seed, the same every run.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence

import torch

EXHAUSTIVE_MAX_CHANNELS = 8
SAMPLED_PER_SIZE = 10
SUBSET_SEED = 0

# (images [b, |S|, H, W], channel_ids [b, |S|]) -> class scores [b, K]
Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def channel_subsets(num_channels: int, seed: int = SUBSET_SEED) -> list[tuple[int, ...]]:
    """The subsets to evaluate, each a sorted tuple of channel indices; ordered by size, then lexicographically."""
    if num_channels < 1:
        raise ValueError(f"num_channels must be at least 1, got {num_channels}")
    C = num_channels
    if C <= EXHAUSTIVE_MAX_CHANNELS:
        return [s for k in range(1, C + 1) for s in itertools.combinations(range(C), k)]
    rng = random.Random(seed)
    subsets = []
    for k in range(1, C + 1):
        if k in (1, 2, C - 1, C):
            subsets += itertools.combinations(range(C), k)
            continue
        chosen: set[tuple[int, ...]] = set()
        while len(chosen) < min(SAMPLED_PER_SIZE, math.comb(C, k)):
            chosen.add(tuple(sorted(rng.sample(range(C), k))))
        subsets += sorted(chosen)
    return subsets


def subset_name(subset: Sequence[int], channel_names: Sequence[str]) -> str:
    return "+".join(channel_names[c] for c in subset)


def subset_accuracies(score: Scorer, pixels: torch.Tensor, labels: torch.Tensor, subsets: list[tuple[int, ...]],
                      batch_size: int = 256) -> dict[tuple[int, ...], float]:
    """Top-1 accuracy of ``score`` on the images restricted to each subset.

    pixels: [N, C, H, W] preprocessed images with every channel; labels: [N] class indices.
    """
    N = pixels.shape[0]
    out = {}
    for subset in subsets:
        columns = torch.tensor(subset, device=pixels.device)
        correct = 0
        for start in range(0, N, batch_size):
            chunk = pixels[start : start + batch_size, columns]  # [b, |S|, H, W]
            ids = columns.expand(chunk.shape[0], -1)  # [b, |S|] original channel ids
            pred = score(chunk, ids).argmax(1)
            correct += (pred == labels[start : start + batch_size]).sum().item()
        out[subset] = correct / N
    return out


def summarise(accuracies: dict[tuple[int, ...], float], channel_names: Sequence[str]) -> dict:
    """JSON summary: accuracy per named subset, mean per subset size, and their means.

    ``mean`` averages the per-size means (each size counts once, as the paper's tables report
    sizes), so it does not depend on how many subsets a sampled size contributed.
    """
    sizes = sorted({len(s) for s in accuracies})
    by_size = {str(k): sum(a for s, a in accuracies.items() if len(s) == k) / sum(len(s) == k for s in accuracies)
               for k in sizes}
    full = tuple(range(len(channel_names)))
    return {
        "channels": list(channel_names),
        "n_subsets": len(accuracies),
        "by_size": by_size,
        "subsets": {subset_name(s, channel_names): a for s, a in accuracies.items()},
        "mean": sum(by_size.values()) / len(by_size),
        "mean_over_subsets": sum(accuracies.values()) / len(accuracies),
        **({"full": accuracies[full]} if full in accuracies else {}),
    }
