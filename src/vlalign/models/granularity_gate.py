"""VL-PET's granularity control of a parameter-efficient module's output (Hu et al. 2023, "VL-PET:
Vision-and-Language Parameter-Efficient Tuning via Granularity Control", §3).

A PET module (adapter, LoRA) adds ``delta`` [..., F] to a layer's output; VL-PET multiplies it by a
granularity-controlled matrix G first, ``h + G ⊙ delta``, so that training decides how much of the
modification each part of the layer receives. The granularity sets how many distinct values G has:

- ``module``: one value for the whole module (VL-PET's "x-small");
- ``head``: one per attention head's slice of the output (``group_size`` = the tower's head width;
  VL-PET's "middle");
- ``element``: one per output feature (VL-PET's "large").

VL-PET can generate G from the hidden states; here G is a learned parameter of the module, so that a
gated LoRA still folds into the base weights (``values()`` scales the rows of the update).
"""

from __future__ import annotations

import torch
from torch import nn

GRANULARITIES = ("module", "head", "element")


class GranularityGate(nn.Module):
    """``gate(delta [..., F]) -> delta * G`` with ``G = 2 σ(logit)``: 1 at initialisation, so training
    starts from the ungated module; a gate can close (0) or amplify (up to 2)."""

    def __init__(self, features: int, granularity: str, group_size: int):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity '{granularity}' is not one of: {', '.join(GRANULARITIES)}")
        if granularity == "head" and features % group_size:
            raise ValueError(f"a head-wise gate splits {features} features into heads of {group_size}; "
                             "they do not divide")
        count = {"module": 1, "head": features // group_size, "element": features}[granularity]
        self.group = features // count  # consecutive features that share one value
        self.logit = nn.Parameter(torch.zeros(count))

    def values(self) -> torch.Tensor:
        """G as one value per output feature, [F]."""
        return (2 * torch.sigmoid(self.logit)).repeat_interleave(self.group)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        return delta * self.values().to(delta.dtype)
