"""Simulated NVFP4 training (NVIDIA, "Pretraining Large Language Models with NVFP4", arXiv 2509.25149).

NVFP4 stores a tensor as 4-bit E2M1 values (+-{0, 0.5, 1, 1.5, 2, 3, 4, 6}), times one FP8 E4M3 scale
per block of 16 values, times one FP32 scale per tensor. Here every quantisation is simulated in fp32
("fake quantisation"): values are rounded to exactly what NVFP4 can represent and the GEMMs run in
fp32 on them. That reproduces the numerics (what a CPU can check), not the speed of FP4 tensor cores.

The training recipe of the paper, in ``NVFP4Linear`` (a linear layer y = x W^T, x [M, K], W [N, K]):

- Fprop  ``y = Q(x) Q(W)^T``: x in 1x16 blocks along K; W in 16x16 blocks, so that W and W^T quantise
  to the same values and the backward pass sees the weights the forward pass used (2-D scaling).
  Both round to nearest (ties to even).
- Dgrad  ``dx = Q_sr(dy) Q(W)``: dy in 1x16 blocks along N, stochastic rounding (gradients must not
  be rounded with a bias, or small updates vanish systematically).
- Wgrad  ``dW = Q_sr(R dy)^T Q(R x)``: a random Hadamard transform R (16x16 Hadamard with random
  signs, orthogonal: R^T R = I) mixes each 16 tokens of the contraction dimension, spreading outliers
  over their block before it is quantised in 16x1 blocks. Only Wgrad gets it, as in the paper.
- Embeddings, heads and the first/last transformer blocks stay in high precision (``apply_nvfp4``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 16
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # index even <=> mantissa bit 0
E2M1_MAX, E4M3_MAX = 6.0, 448.0
HADAMARD_SEED = 2509_25149  # one fixed random sign vector for every layer and step


# Step of the E2M1 grid by the integer part of |x| in [0, 6]: 0.5 below 2, 1 in [2, 4), 2 in [4, 6].
_E2M1_STEP = (0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 2.0)


def round_e2m1(x: torch.Tensor, stochastic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round ``x`` to E2M1 values; magnitudes above 6 saturate. Nearest rounding breaks ties to the
    even code; stochastic rounding rounds up with probability (|x| - lo) / (hi - lo), unbiased in [-6, 6].

    The grid is uniform within each binade, so rounding is ``round(x / step) * step`` with the step of
    x's binade (``torch.round`` breaks ties to even, which is the even code here; both signs alike).
    """
    x = x.clamp(-E2M1_MAX, E2M1_MAX)
    binade = x.abs().long().clamp_(0, len(_E2M1_STEP) - 1)  # clamp: a NaN stays NaN instead of a bad index
    step = torch.tensor(_E2M1_STEP, dtype=x.dtype, device=x.device)[binade]
    if stochastic:  # floor(v + u), u ~ U[0, 1): up with probability frac(v), for either sign
        noise = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        return torch.floor(x / step + noise) * step
    return torch.round(x / step) * step


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Nearest FP8 E4M3 value (as fp32); inputs here are positive and at most 448."""
    return x.to(torch.float8_e4m3fn).to(x.dtype)


@dataclass
class NVFP4Tensor:
    """``values * block_scales (each over its block) * tensor_scale`` is the represented tensor."""

    values: torch.Tensor  # [R, C] E2M1 values, signed
    block_scales: torch.Tensor  # [ceil(R/br), ceil(C/bc)] E4M3 decode scale of each block (as fp32)
    tensor_scale: torch.Tensor  # [] FP32 decode scale of the tensor: amax / (6 * 448)
    block: tuple[int, int]

    def dequantize(self) -> torch.Tensor:
        blocks = _in_blocks(self.values, self.block)
        out = blocks * (self.block_scales * self.tensor_scale)[:, None, :, None]
        R, C = self.values.shape
        return out.reshape(out.shape[0] * out.shape[1], -1)[:R, :C]


def _in_blocks(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """[R, C] -> [ceil(R/br), br, ceil(C/bc), bc], zero-padded at ragged edges (zeros never change an amax)."""
    R, C = x.shape
    br, bc = block
    if R % br or C % bc:
        x = F.pad(x, (0, -C % bc, 0, -R % br))
    return x.view(x.shape[0] // br, br, x.shape[1] // bc, bc)


def _quantize_blocks(x: torch.Tensor, block: tuple[int, int], stochastic: bool,
                     generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (E2M1 values in the block layout of ``_in_blocks``, block decode scales, tensor decode scale)."""
    if x.ndim != 2:
        raise ValueError(f"NVFP4 quantisation takes a 2-D tensor, got shape {tuple(x.shape)}")
    blocks = _in_blocks(x, block)
    block_amax = blocks.abs().amax(dim=(1, 3))  # [R/br, C/bc]
    amax = block_amax.max()
    tensor_scale = torch.where(amax > 0, amax / (E2M1_MAX * E4M3_MAX), torch.ones_like(amax))
    block_scales = round_e4m3(block_amax / E2M1_MAX / tensor_scale)  # <= 448 by construction
    decode = block_scales * tensor_scale
    encode = torch.where(decode > 0, 1 / decode.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(decode))
    values = round_e2m1(blocks * encode[:, None, :, None], stochastic, generator)
    return values, block_scales, tensor_scale


def quantize_nvfp4(x: torch.Tensor, block: tuple[int, int] = (1, BLOCK), stochastic: bool = False,
                   generator: torch.Generator | None = None) -> NVFP4Tensor:
    """Quantise a 2-D tensor with (br, bc) blocks; ragged edges are padded with zeros.

    Per-tensor decode scale s = amax / (6 * 448); per-block decode scale e4m3(amax_b / 6 / s) (<= 448);
    each element is x / (block scale * s) rounded to E2M1 (the paper's NVFP4 recipe). A block whose
    scale underflows E4M3 is all zeros.
    """
    values, block_scales, tensor_scale = _quantize_blocks(x, block, stochastic, generator)
    R, C = x.shape
    return NVFP4Tensor(values.reshape(values.shape[0] * values.shape[1], -1)[:R, :C], block_scales, tensor_scale,
                       block)


def fake_quantize(x: torch.Tensor, block: tuple[int, int] = (1, BLOCK), stochastic: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` rounded to an NVFP4-representable tensor (nearest, or stochastically), in x's dtype and shape."""
    values, block_scales, tensor_scale = _quantize_blocks(x, block, stochastic, generator)
    out = values * (block_scales * tensor_scale)[:, None, :, None]
    R, C = x.shape
    return out.reshape(out.shape[0] * out.shape[1], -1)[:R, :C]


def hadamard(n: int = BLOCK) -> torch.Tensor:
    """Orthonormal Sylvester-Hadamard matrix [n, n] (n a power of two)."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n**0.5


def random_hadamard(n: int = BLOCK, seed: int = HADAMARD_SEED) -> torch.Tensor:
    """R = H diag(s) with random signs s: orthogonal, R^T R = I."""
    signs = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed)) * 2.0 - 1.0
    return hadamard(n) * signs


def rotate_token_blocks(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Apply ``rotation`` [16, 16] to every 16 consecutive rows (tokens) of x [M, K], zero-padding M
    -> [16, G*K] with G = ceil(M/16): column (g, k) is ``rotation @ x[16g:16g+16, k]``.

    In this layout each column is one 16x1 quantisation block, and ``.view(16 * G, K)`` lists the
    rotated rows in an order shared by every operand, so for any a, b with M rows
    ``rot(a).view(-1, Ka).T @ rot(b).view(-1, Kb) = a^T b`` (R^T R = I)."""
    n, K = rotation.shape[0], x.shape[1]
    if x.shape[0] % n:
        x = F.pad(x, (0, 0, 0, -x.shape[0] % n))
    groups = x.view(-1, n, K).transpose(0, 1).reshape(n, -1)  # [16, G*K]
    return rotation.to(x.dtype) @ groups


class NVFP4LinearFunction(torch.autograd.Function):
    """x [M, K], weight [N, K], bias [N] or None -> y [M, N], with NVFP4 GEMMs as in the module docstring."""

    @staticmethod
    def forward(ctx, x, weight, bias, rotation):
        weight_q = fake_quantize(weight, (BLOCK, BLOCK))
        y = fake_quantize(x, (1, BLOCK)) @ weight_q.t()
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(x, weight_q, rotation)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight_q, rotation = ctx.saved_tensors
        dx = fake_quantize(dy, (1, BLOCK), stochastic=True) @ weight_q  # Dgrad
        # Wgrad, contracting over tokens: rotate each 16 tokens, quantise in 16x1 blocks along them
        dy_r = fake_quantize(rotate_token_blocks(dy, rotation), (BLOCK, 1), stochastic=True)  # [16, G*N]
        x_r = fake_quantize(rotate_token_blocks(x, rotation), (BLOCK, 1))  # [16, G*K]
        dw = dy_r.view(-1, dy.shape[1]).t() @ x_r.view(-1, x.shape[1])
        db = dy.sum(0) if ctx.has_bias else None
        return dx, dw, db, None


class NVFP4Linear(nn.Linear):
    """An ``nn.Linear`` whose GEMMs are simulated in NVFP4 while training; the weights it keeps (and
    saves) are the fp32 master weights, so checkpoints are those of the plain model."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__(in_features, out_features, bias, device=device)
        self.register_buffer("rotation", random_hadamard(), persistent=False)

    @classmethod
    def wrap(cls, linear: nn.Linear) -> NVFP4Linear:
        """The same parameters (same objects: an optimizer built before keeps working) in an NVFP4 layer."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.rotation = random_hadamard().to(linear.weight.device)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # inference keeps the master weights' precision, as `vlalign.load` does
            return super().forward(x)
        y = NVFP4LinearFunction.apply(x.reshape(-1, x.shape[-1]), self.weight, self.bias, self.rotation)
        return y.view(*x.shape[:-1], self.out_features)


def apply_nvfp4(model: nn.Module, keep_first: int = 1, keep_last: int = 1) -> list[str]:
    """Swap the ``nn.Linear`` layers inside the transformer blocks of every tower for ``NVFP4Linear``,
    except in each stack's first ``keep_first`` and last ``keep_last`` blocks -> the swapped names.

    Patch/token embeddings, projections, heads and the LM output layer are outside the block stacks and
    stay in high precision; so do the kept blocks (the paper keeps a small share of the blocks, mostly
    the final ones, in BF16 for stability).
    """
    swapped = []
    for stack_name, stack in model.named_modules():
        if not isinstance(stack, nn.ModuleList):
            continue
        for index in range(keep_first, len(stack) - keep_last):
            for parent_name, parent in stack[index].named_modules():
                for name, child in list(parent.named_children()):
                    if type(child) is nn.Linear:
                        setattr(parent, name, NVFP4Linear.wrap(child))
                        swapped.append(".".join(filter(None, (stack_name, str(index), parent_name, name))))
    return swapped
