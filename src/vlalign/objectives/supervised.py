"""Supervised classification loss: softmax cross-entropy of class logits against integer labels.

ChannelViT is trained this way (Bao et al. 2023, reference ``meta_arch/supervised.py``:
``nn.Linear(embed_dim, num_classes)`` and cross-entropy without label smoothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign.errors import DataError


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, K], labels [B] in 0..K-1 -> mean cross-entropy (scalar)."""
    K = logits.shape[1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= K):
        bad = labels[(labels < 0) | (labels >= K)][0].item()
        raise DataError(f"Label {bad} is outside 0..{K - 1}: the supervised objective needs a labelled source whose "
                        f"classes match model.num_classes={K} (-1 marks an unlabelled sample).")
    return F.cross_entropy(logits, labels)
