"""Matmul precision chosen by measurement: ``train.precision`` "fp32" | "bf16" | "auto".

bf16 autocast only pays where the hardware multiplies bf16 natively (tensor cores, AMX). A CPU
without it emulates bf16 and runs matmuls 10-100x slower than fp32 (``PERF.md``), so "auto"
times one GEMM of the towers' shape in both precisions, once per machine (cached beside the
matmul peak, ``vlalign.train.metrics.cached_probe``), and picks bf16 only when it is clearly faster.

Under autocast the forward (and so the backward) runs its matmuls in bf16; parameters, gradients,
optimizer state and the loss stay fp32 (``outputs_in_fp32`` casts what the objectives read).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time

import torch
import torch.nn.functional as F

from vlalign.errors import ConfigError
from vlalign.train.metrics import cached_probe, machine_key

log = logging.getLogger(__name__)

# (tokens, width, out): the MLP GEMM of a small tower on CPU; on GPUs large enough to leave launch overhead behind.
PROBE_SHAPE = {"cpu": (512, 256, 1024), "cuda": (4096, 4096, 4096)}
# bf16 must beat fp32 by this factor: autocast adds casts, and element-wise work does not get faster.
MIN_BF16_SPEEDUP = 1.2
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_precision(setting: str, device: str = "cpu") -> torch.dtype:
    """The compute dtype for ``train.precision`` on ``device``."""
    if setting == "auto" and device == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float32  # no bf16 units to measure (before Ampere)
    if setting == "auto":
        speedup = bf16_speedup(device)
        dtype = torch.bfloat16 if speedup >= MIN_BF16_SPEEDUP else torch.float32
        log.info("precision auto: bf16 matmuls run %.2fx the speed of fp32 on this %s -> %s", speedup, device,
                 "bf16" if dtype == torch.bfloat16 else "fp32")
        return dtype
    if setting not in DTYPES:
        raise ConfigError(f"train.precision is '{setting}', which is not one of: fp32, bf16, auto.")
    if setting == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision=bf16, but {torch.cuda.get_device_name()} has no bf16 support. "
                          "Use train.precision=fp32 (or auto).")
    return DTYPES[setting]


def precision_name(setting: str, dtype: torch.dtype) -> str:
    """What a run records as its precision: "fp32" | "bf16" (what ``auto`` chose on this machine), or the
    simulated "nvfp4-sim" (whose step runs in fp32 around the quantised linears)."""
    if setting == "nvfp4-sim":
        return setting
    return next(name for name, d in DTYPES.items() if d == dtype)


def bf16_speedup(device: str = "cpu") -> float:
    """fp32 time / bf16 time of one GEMM of ``PROBE_SHAPE``: measured once per machine, then cached."""
    return cached_probe(machine_key(device, "bf16_speedup"), lambda: probe_bf16_speedup(device))


def probe_bf16_speedup(device: str = "cpu", repeats: int = 5) -> float:
    """Best-of-``repeats`` ``F.linear`` (the layout of ``nn.Linear``) in fp32 and in bf16; their time ratio."""
    tokens, width, out = PROBE_SHAPE[device]
    generator = torch.Generator(device).manual_seed(0)  # never the global RNG
    x = torch.randn(tokens, width, device=device, generator=generator)
    w = torch.randn(out, width, device=device, generator=generator)

    def best_time(dtype: torch.dtype) -> float:
        a, b = x.to(dtype), w.to(dtype)
        F.linear(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            F.linear(a, b)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    return best_time(torch.float32) / best_time(torch.bfloat16)


def autocast(dtype: torch.dtype, device: str = "cpu") -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` for a reduced precision, else nothing (fp32 runs untouched)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=dtype)


def outputs_in_fp32(out):
    """The model output with its top-level reduced-precision tensors (and dict values) cast to fp32, so that
    losses (logits, softmax, cross-entropy) are computed in full precision. Nested features are left as they are."""
    if not dataclasses.is_dataclass(out):
        return out
    changes = {}
    for f in dataclasses.fields(out):
        value = getattr(out, f.name)
        if _reduced(value):
            changes[f.name] = value.float()
        elif isinstance(value, dict) and any(_reduced(v) for v in value.values()):
            changes[f.name] = {k: v.float() if _reduced(v) else v for k, v in value.items()}
    return dataclasses.replace(out, **changes) if changes else out


def _reduced(value) -> bool:
    return torch.is_tensor(value) and value.is_floating_point() and value.dtype != torch.float32
