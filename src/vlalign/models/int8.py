"""Dynamic int8 inference on CPU: the towers' linear layers multiply in int8 (fbgemm kernels).

Each weight matrix is quantized once, symmetrically per output channel (scale = max |w| / 127); each
activation is quantized per call from its own range, and the int32 products are scaled back to fp32.
Attention, normalisation and GELU stay fp32. This approximates the fp32 model: on the default recipe's
trained run every embedding keeps a cosine of 0.999 or more to its fp32 one, and the eval scores move by
at most 0.015 (``benchmarks/results/int8_inference.md``). It runs faster where int8 multiplies are faster
than fp32 ones: config "A"'s towers about 1.3-1.4x on this CPU (``benchmarks/results/vs_open_clip.md``).

Inference only: the packed weights are not parameters, so a quantized model neither trains nor saves.
The kernels are torch's quantized CPU operators (``torch.ops.quantized.linear_dynamic``), which torch
marks for removal in a future release; the pinned torch has them.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from vlalign.errors import VlalignError


class DynamicInt8Linear(nn.Module):
    """An ``nn.Linear`` with int8 weights (per output channel) and per-call int8 activations."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()  # [out, in]
        scale = (weight.abs().amax(1) / 127).clamp_min(1e-12).double()  # [out]
        with warnings.catch_warnings():  # the deprecation notice of quantized tensors; see the module docstring
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scale, torch.zeros_like(scale, dtype=torch.long), 0,
                                                 torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in] fp32 -> [..., out] fp32."""
        # reduce_range: 7-bit activations, so that AVX2's int16 pair sums (vpmaddubsw) cannot saturate
        out = torch.ops.quantized.linear_dynamic(x.reshape(-1, self.in_features).contiguous(), self.packed, True)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def int8_supported() -> bool:
    """Whether this torch has the fbgemm int8 kernels (x86 builds)."""
    return torch.backends.quantized.engine in ("x86", "fbgemm") and "fbgemm" in torch.backends.quantized.supported_engines


def quantize_linears(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` under ``module`` by a ``DynamicInt8Linear``, in place -> how many."""
    if not int8_supported():
        raise VlalignError(f"int8 inference needs torch's x86 quantized engine (fbgemm); this torch has "
                           f"{torch.backends.quantized.supported_engines}. Load without int8.")
    return _swap_linears(module)


def _swap_linears(module: nn.Module) -> int:
    count = 0
    for name, child in module.named_children():
        if type(child) is nn.Linear:  # exactly Linear: subclasses keep their own forward
            setattr(module, name, DynamicInt8Linear(child))
            count += 1
        else:
            count += _swap_linears(child)
    return count
