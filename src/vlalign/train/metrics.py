"""``metrics.jsonl`` (one JSON object per logged step) and throughput instrumentation.

Throughput fields of every record: ``pairs_per_s`` (global), ``data_wait_fraction`` (time spent
waiting for the loader), ``flops_per_s`` (model FLOPs of forward + backward, counted once per run
with ``FlopCounterMode`` on one sample; GradCache's extra forward is not counted, as MFU is
usually reported), ``flops_fraction_of_peak`` (against a matmul peak measured once per machine
and cached in ``~/.cache/vlalign/peak.json``, beside the other hardware probes) and
``peak_memory_mib`` (max RSS on CPU, max allocated on CUDA).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vlalign.provenance import cpu_model

PEAK_PROBE_SIZE = {"cpu": 1024, "cuda": 8192}


class MetricsLog:
    """Appends records to ``metrics.jsonl`` on rank 0, and passes them to ``sinks`` (``vlalign.train.sinks``);
    on resume, forgets what came after the checkpoint."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.sinks: list = []

    def truncate(self, step: int) -> None:
        """Keep records up to ``step``; also drops a line torn by a kill mid-write."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            for sink in self.sinks:
                sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class Throughput:
    """Pairs/s, data-wait fraction, FLOP/s and its fraction of the measured peak over a logging window."""

    def __init__(self, world: int):
        self.world = world
        self.flops_per_sample = 0.0
        self.peak = 0.0
        self.reset()

    def reset(self) -> None:
        self.start, self.pairs, self.data_wait = time.perf_counter(), 0, 0.0

    def measure_model(self, model: nn.Module, batch: dict, forward_kwargs: dict | None = None) -> None:
        """Count FLOPs per sample once (all ranks together: sharded models gather inside forward)."""
        self.flops_per_sample = count_flops_per_sample(model, batch, forward_kwargs)
        self.peak = matmul_peak_flops(next(model.parameters()).device.type) * self.world

    def record(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        flops_per_s = self.flops_per_sample * self.pairs / elapsed
        out = {"pairs_per_s": self.pairs / elapsed, "data_wait_fraction": self.data_wait / elapsed,
               "flops_per_s": flops_per_s, "flops_fraction_of_peak": flops_per_s / self.peak if self.peak else 0.0,
               "peak_memory_mib": peak_memory_mib()}
        self.reset()
        return out


def count_flops_per_sample(model: nn.Module, batch: dict, forward_kwargs: dict | None = None) -> float:
    """FLOPs of one forward + backward of one sample (dense ops, as counted by ``FlopCounterMode``), with
    the forward options the training step uses (``step.forward_kwargs``): the FLOPs actually computed."""
    from torch.utils.flop_counter import FlopCounterMode

    from vlalign.train.step import OPTIONAL_INPUTS  # here: step -> precision -> metrics imports at load time

    # Two samples, divided by two: fusion layers (model.fusion) pair each sample with a negative from the batch;
    # the sample with the longest caption first (a pooled-only text tower runs the batch at that length).
    order = batch["text_mask"].sum(1).argsort(descending=True) if "text_mask" in batch else torch.arange(2)
    few = {k: v[order[:2]] for k, v in batch.items() if torch.is_tensor(v)}
    samples = few["text_ids"].shape[0]
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    # fork_rng: random layers must not draw here, or a resumed run's RNG stream would shift.
    # force_eager: a compiled model counts its eager ops (and compiles nothing for these few samples).
    with torch.random.fork_rng(devices=devices), torch.compiler.set_stance("force_eager"), \
            FlopCounterMode(display=False) as counter:
        negatives = (few["negative_ids"], few["negative_mask"]) if "negative_ids" in few else ()
        options = {name: few[name] for name in OPTIONAL_INPUTS if name in few}
        out = model(few.get("images"), few["text_ids"], few["text_mask"], few.get("channel_ids"), *negatives,
                    **options, **(forward_kwargs or {}))
        outputs = [getattr(out, f.name) for f in dataclasses.fields(out)]
        if getattr(out, "fusion", None) is not None:  # the fused pairs' logits carry the fusion layers' backward
            outputs += [out.fusion.match_logits, out.fusion.mlm_logits]
        sum(t.float().sum() for t in outputs if torch.is_tensor(t) and t.requires_grad).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops()) / samples


def peak_memory_mib() -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cache_dir() -> Path:
    return Path(os.environ.get("VLALIGN_CACHE_DIR") or Path.home() / ".cache" / "vlalign")


def machine_key(device: str = "cpu", probe: str = "fp32") -> str:
    """The cache key of a measurement ``probe`` on this machine's ``device`` (CPU model and thread count)."""
    name = torch.cuda.get_device_name() if device == "cuda" else f"{cpu_model()}|threads={torch.get_num_threads()}"
    return f"{name}|torch={torch.__version__}|{probe}"


def cached_probe(key: str, measure: Callable[[], float]) -> float:
    """``measure()`` once per ``key``, then the value kept in ``peak.json`` of the cache directory."""
    path = cache_dir() / "peak.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = measure()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            os.replace(tmp, path)
        except OSError:  # a read-only home: measure again next time
            pass
    return cache[key]


def matmul_peak_flops(device: str = "cpu") -> float:
    """fp32 matmul FLOP/s of ``device`` (at this thread count on CPU): probed once, then read from the cache."""
    return cached_probe(machine_key(device), lambda: probe_matmul_peak(device))


def probe_matmul_peak(device: str = "cpu", repeats: int = 10) -> float:
    """Best of ``repeats`` square fp32 matmuls (2 n^3 FLOPs each). Measured on a busy machine this is
    low; delete the cache file to measure again."""
    n = PEAK_PROBE_SIZE[device]
    generator = torch.Generator(device).manual_seed(0)  # never the global RNG
    a = torch.randn(n, n, device=device, generator=generator)
    b = torch.randn(n, n, device=device, generator=generator)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
