"""SALT's data selection (Rawat et al. 2024, arXiv 2410.18779, §5 "SALT_DS"): a small trained teacher scores
every training pair, and the informative ones are kept: hard for the teacher, but not the hardest,
which are mostly noise the teacher could not fit either.

A pair's score is the teacher's contrastive loss on it: -log softmax over a pool of captions of the
pair's own similarity, with ``pool_size`` random other pairs of the source as the negatives (the
teacher's InfoNCE as in training, so scores of different pairs are comparable). ``informative_subset``
sorts by that loss, skips the hardest ``skip_hardest`` fraction and keeps the next ``keep`` fraction.
"""

from __future__ import annotations

import torch

from vlalign.errors import DataError


def teacher_losses(image: torch.Tensor, text: torch.Tensor, logit_scale: float, pool_size: int = 255,
                   seed: int = 0) -> torch.Tensor:
    """[N] InfoNCE loss (image -> caption) of each pair among its own caption and ``pool_size`` random
    others; ``image``, ``text`` [N, E] unit-norm teacher embeddings of the pairs."""
    n = image.shape[0]
    if n < 2:
        raise DataError(f"Scoring pairs against each other needs at least 2 pairs, got {n}.")
    g = torch.Generator().manual_seed(seed)
    pool = min(pool_size, n - 1)
    others = torch.stack([torch.randperm(n - 1, generator=g)[:pool] for _ in range(n)])  # [N, pool] of n-1
    others += (others >= torch.arange(n)[:, None]).long()  # skip the pair itself
    own = (image * text).sum(1, keepdim=True)  # [N, 1]
    negatives = torch.einsum("ne,npe->np", image, text[others])  # [N, pool]
    logits = logit_scale * torch.cat([own, negatives], 1)  # [N, 1 + pool]
    return -logits.log_softmax(1)[:, 0]


def informative_subset(losses: torch.Tensor, keep: float, skip_hardest: float = 0.0) -> torch.Tensor:
    """Sorted indices: by descending teacher loss, skip the first ``skip_hardest`` fraction, keep the next
    ``keep`` fraction (``round(fraction * N)`` each; ties broken by position)."""
    if not 0 < keep <= 1 or not 0 <= skip_hardest < 1 or keep + skip_hardest > 1 + 1e-9:
        raise DataError(f"Keep a fraction in (0, 1] after skipping one in [0, 1), together at most 1; got keep={keep}, "
                        f"skip_hardest={skip_hardest}.")
    n = len(losses)
    order = (-losses).argsort(stable=True)
    start = round(skip_hardest * n)
    return order[start : start + round(keep * n)].sort().values
