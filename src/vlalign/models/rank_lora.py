"""Dynamic Rank-Selective LoRA (Lu et al. 2025, "Adaptive Rank, Reduced Forgetting: Knowledge Retention
in Continual Learning Vision-Language Models with Dynamic Rank-Selective LoRA").

LoRA's update ``(α/r) B A`` gets one learnable importance per rank, ``(α/r) B diag(s) A``, and an L1
penalty ``λ Σ|s|`` drives the importance of ranks the data does not need to exactly zero, so each
module's effective rank adapts to how much it has to change. The penalty is minimised by a proximal
step after every optimizer update (soft thresholding, ``s <- sign(s) max(|s| - lr λ, 0)``): a plain
(sub)gradient of |s| under Adam would oscillate around zero instead of reaching it. At inference the
update is folded into the base weight (``merged()``), so the deployed model is the plain architecture.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RankSelectiveLoRA(nn.Module):
    """``base(x) + gate((α/r) B diag(s) A x)``: a LoRA-wrapped ``nn.Linear`` with per-rank importance ``s``.

    ``sparsity`` is λ, read by ``shrink_importance``; ``gate`` (optional, a ``GranularityGate``) scales the
    update's output features (VL-PET). ``base_layer`` keeps peft's name, so the same name mapping serves both.
    """

    wrapped = "base_layer"

    def __init__(self, base: nn.Linear, rank: int, alpha: float, sparsity: float, gate: nn.Module | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank {rank}: a LoRA update needs at least one rank")
        self.base_layer = base
        self.scaling = alpha / rank
        self.sparsity = sparsity
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))  # [r, in]
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # [out, r]; zero: starts unadapted
        self.lora_importance = nn.Parameter(torch.ones(rank))  # [r] s
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as peft / the LoRA reference
        self.lora_gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = F.linear(x, self.lora_A) * self.lora_importance  # [..., r]
        delta = F.linear(low, self.lora_B) * self.scaling  # [..., out]
        if self.lora_gate is not None:
            delta = self.lora_gate(delta)
        return self.base_layer(x) + delta

    def delta_weight(self) -> torch.Tensor:
        """The update as a weight matrix [out, in]: ``gate ⊙ (α/r) B diag(s) A``."""
        delta = (self.lora_B * self.lora_importance) @ self.lora_A * self.scaling
        if self.lora_gate is not None:
            delta = delta * self.lora_gate.values()[:, None]
        return delta

    def active_ranks(self) -> int:
        return int((self.lora_importance != 0).sum())

    @torch.no_grad()
    def shrink_importance(self, lr: float) -> None:
        """The proximal step of ``λ Σ|s|`` for a step of size ``lr``; ranks it reaches stay exactly zero."""
        s = self.lora_importance
        s.copy_(s.sign() * (s.abs() - lr * self.sparsity).clamp_min(0))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base ``nn.Linear`` with the update folded in (a new module; this one is unchanged)."""
        base = self.base_layer
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        merged.weight.copy_(base.weight + self.delta_weight().to(base.weight.dtype))
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        return merged
