"""LaVIN's Mixture-of-Modality Adapter (Luo et al. 2023, "Cheap and Quick: Efficient Vision-Language
Instruction Tuning for Large Language Models", §3.2 MMA).

An adapter with one shared down-projection and two up-projections ("paths"): LaVIN's single-modal
(text-only) path and multimodal (image-text) path. A router turns the input into soft weights over the
two paths, ``h + Σ_k w_k up_k(act(down(h)))``, so one set of adapters serves both kinds of input and
learns to switch between them. LaVIN routes a whole sequence by its modality token; a dual encoder has
no mixed sequence, so here each token is routed by its own feature. With the adapters shared by the
vision and text towers (``model.adapter.share``) the router sees image and text tokens and can send
them down different paths; the routing weights (``route``) show whether it does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_PATHS = 2  # 0: the text-only path, 1: the image(-text) path


class MixtureOfModalityAdapter(nn.Module):
    """``mlp(x) + gate(Σ_k w_k up_k(gelu(down(h))))`` with ``h = mlp(x)`` and ``w = softmax(router(h) / τ)``.

    ``temperature`` τ softens the routing (LaVIN's router divides its logits by a temperature, t=10 in our
    reading of the reference code). Up-projections start at zero, so the adapted model starts as the pretrained
    one; the router keeps nn.Linear's random init (as the reference's ``expert_weights``): with a zero router
    both paths would get equal weights and equal gradients forever, stay identical, and the router would never
    receive a gradient. ``gate``: an optional ``GranularityGate`` (VL-PET)."""

    wrapped = "mlp"

    def __init__(self, mlp: nn.Module, width: int, rank: int, temperature: float = 10.0,
                 gate: nn.Module | None = None):
        super().__init__()
        self.mlp = mlp
        self.temperature = temperature
        self.down = nn.Linear(width, rank)
        self.up = nn.ModuleList(nn.Linear(rank, width) for _ in range(NUM_PATHS))
        self.adapter_router = nn.Linear(width, NUM_PATHS)
        for layer in self.up:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.adapter_gate = gate

    def route(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., D] -> path weights [..., 2], summing to 1."""
        return F.softmax(self.adapter_router(h) / self.temperature, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(x)  # [B, T, D]
        z = F.gelu(self.down(h))  # [B, T, r]
        weights = self.route(h)  # [B, T, 2]
        delta = sum(weights[..., k : k + 1] * up(z) for k, up in enumerate(self.up))  # [B, T, D]
        if self.adapter_gate is not None:
            delta = self.adapter_gate(delta)
        return h + delta
