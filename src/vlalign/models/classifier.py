"""A linear classification head on the pooled image feature (ChannelViT's supervised setting).

Bao et al. 2023 (§3, Table 11): one linear classifier on ``LayerNorm(x)[:, 0]``, shared by every
channel subset, beat heads conditioned on the channel combination. It returns logits, a feature
like any other; the cross-entropy lives in ``vlalign.objectives.supervised``.
"""

from __future__ import annotations

import torch
from torch import nn

from vlalign.models.vit import VisionFeatures


class LinearClassifier(nn.Module):
    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: VisionFeatures) -> torch.Tensor:
        return self.linear(features.pooled)  # [B, K] logits
