"""Sparsemax: Euclidean projection onto the probability simplex (Martins & Astudillo, ICML 2016).

    sparsemax(z) = argmin_{p in simplex} ||p - z||^2 = max(z - tau(z), 0)

Unlike softmax it gives exact zeros, which is what FDT uses as its "sparse activation constraint"
(METHODS.md §2.2). The forward is the sort-based O(K log K) algorithm of the paper (Alg. 1); the
backward is the closed-form Jacobian-vector product of the paper's Eq. 14, so autograd never has to
differentiate through the sort and the cumulative sum.
"""

import torch
from torch import Tensor

# Low-precision inputs are projected in float32: the cumulative sum over K codes loses the
# threshold tau in float16/bfloat16 long before K reaches a realistic codebook size.
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _sparsemax_last_dim(z: Tensor) -> Tensor:
    """Sparsemax over the last dimension of z ([..., K]) in z's dtype."""
    # Sparsemax is invariant to adding a constant (tau shifts with it); subtracting the max keeps the
    # cumulative sum small for large inputs, so z=1e6+x gives the same answer as z=x.
    z = z - z.amax(dim=-1, keepdim=True)  # [..., K]
    z_sorted, _ = torch.sort(z, dim=-1, descending=True)  # [..., K]
    cumsum = z_sorted.cumsum(dim=-1)  # [..., K]
    ranks = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)  # [K]
    # Support condition (paper Eq. 2/Alg. 1): 1 + k z_(k) > sum_{j<=k} z_(j). It holds for a prefix
    # of the sorted order, so the support size is the number of ranks where it holds (always >= 1).
    in_support = 1 + ranks * z_sorted > cumsum  # [..., K]
    support_size = in_support.sum(dim=-1, keepdim=True)  # [..., 1]
    tau = (cumsum.gather(-1, support_size - 1) - 1) / support_size.to(z.dtype)  # [..., 1]
    return torch.clamp(z - tau, min=0)


class _Sparsemax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, dim: int) -> Tensor:
        z_last = z.movedim(dim, -1)
        compute_dtype = torch.float32 if z.dtype in _LOW_PRECISION else z.dtype
        out = _sparsemax_last_dim(z_last.to(compute_dtype)).to(z.dtype).movedim(-1, dim)
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        # Jacobian of sparsemax is diag(s) - s s^T / |S| with s the support indicator (paper Eq. 14),
        # so J^T g = s * (g - mean of g over the support). Symmetric, hence J^T = J.
        support = (out > 0).to(grad_out.dtype)
        support_size = support.sum(dim=ctx.dim, keepdim=True)
        support_mean = (grad_out * support).sum(dim=ctx.dim, keepdim=True) / support_size
        return support * (grad_out - support_mean), None


def sparsemax(z: Tensor, dim: int = -1) -> Tensor:
    """Project z onto the probability simplex along `dim`: non-negative, sums to 1, usually sparse.

    Works for any leading batch shape and any `dim`. Entries equal to -inf get weight 0; a slice that
    is entirely -inf (or contains NaN) has no projection and yields NaN, like softmax.
    """
    if not torch.is_floating_point(z):
        raise ValueError(f"sparsemax needs a floating-point tensor, got dtype {z.dtype}; cast it with .float().")
    if z.dim() == 0:
        raise ValueError("sparsemax needs at least one dimension to project along, got a 0-d tensor.")
    if z.shape[dim] == 0:
        raise ValueError(
            f"sparsemax got an empty dimension {dim} (shape {tuple(z.shape)}); there is nothing to normalise."
        )
    return _Sparsemax.apply(z, dim)
