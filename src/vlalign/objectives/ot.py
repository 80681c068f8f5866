"""Optimal transport between two sets of tokens with the IPOT solver (Xie et al. 2020, "A Fast Proximal
Point Method for Computing Exact Wasserstein Distance", Alg. 1), as UNITER's word-region alignment uses it.

IPOT solves min_T <C, T> over plans T with fixed marginals by proximal steps: each outer iteration is
one Sinkhorn projection of the kernel exp(-C/β) ⊙ T^(t). Unlike entropic Sinkhorn it converges to the
exact (unregularised) transport plan; UNITER runs 50 iterations with β = 0.5 and one inner projection.
Marginals are uniform over the real tokens of each set; padded tokens carry no mass.

The distance is differentiable in the cost: the plan is computed without a graph and treated as
constant, and since it is optimal, d<C, T*>/dC = T* (the envelope theorem), which is the gradient
autograd gives for <C, T*.detach()>.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def ipot(cost: torch.Tensor, row_mask: torch.Tensor, col_mask: torch.Tensor, beta: float = 0.5,
         iterations: int = 50) -> torch.Tensor:
    """Transport plans [B, N, M] for costs [B, N, M]; rows (columns) where ``row_mask`` [B, N]
    (``col_mask`` [B, M]) is False are padding. Each plan's row sums tend to 1/n and column sums
    are 1/m (n, m = real rows, columns); padding rows and columns get 0."""
    rows, cols = row_mask.to(cost.dtype), col_mask.to(cost.dtype)
    a = rows / rows.sum(1, keepdim=True)  # [B, N] target row marginals
    b = cols / cols.sum(1, keepdim=True)  # [B, M] target column marginals
    valid = rows[:, :, None] * cols[:, None, :]  # [B, N, M]
    kernel = torch.exp(-cost / beta) * valid
    plan = valid.clone()  # T^(0): all ones on the real entries
    v = b.clone()  # [B, M] column scaling
    for _ in range(iterations):
        q = kernel * plan
        u = _safe_divide(a, (q @ v[:, :, None]).squeeze(2))  # [B, N]
        v = _safe_divide(b, (q.transpose(1, 2) @ u[:, :, None]).squeeze(2))  # [B, M]
        plan = u[:, :, None] * q * v[:, None, :]
    return plan


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the numerator is 0 (padding: no mass to scale)."""
    return torch.where(numerator > 0, numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny), 0.0)


def cosine_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - cos(x_i, y_j): [B, N, D], [B, M, D] -> [B, N, M] in [0, 2]."""
    return 1 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(1, 2)


def transport_distance(x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor,
                       beta: float = 0.5, iterations: int = 50) -> torch.Tensor:
    """[B] Wasserstein distance between the real tokens of x [B, N, D] and of y [B, M, D] under the cosine
    cost; differentiable in x and y through the cost (see the module docstring)."""
    cost = cosine_cost(x, y)  # [B, N, M]
    plan = ipot(cost.detach(), x_mask, y_mask, beta, iterations)
    return (cost * plan).sum((1, 2))
