"""Weight averaging (MindVL; METHODS.md §4 row 29): an exponential moving average of the weights during
training, and the average of a run's last K checkpoints after it.

Both smooth the noise of the last optimizer steps out of the weights; neither needs another forward
pass. The EMA is saved with every checkpoint as ``ema.safetensors`` (a complete model state dict) so a
resumed run continues it exactly; ``vlalign.load`` uses it when the run trained one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from vlalign.checkpoint import (
    TMP_PREFIX,
    commit,
    complete_checkpoints,
    load_meta,
    load_tensors,
    write_files,
)
from vlalign.errors import CheckpointError


class ExponentialMovingAverage:
    """After optimizer step t (1-based): ``ema <- d_t * ema + (1 - d_t) * w``, with
    ``d_t = min(decay, (1 + t) / (10 + t))``.

    The warm-up of d_t is TensorFlow's ``ExponentialMovingAverage(num_updates=t)``: without it, a short
    run's average would still hold a decay^t share of the random initial weights (0.99^300 = 5%).
    Only trainable floating-point parameters are averaged; frozen ones and buffers are copied when saved.
    Under FSDP2 the averages are sharded like their parameters.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters()
                       if p.requires_grad and p.is_floating_point()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the weights after optimizer step ``step`` (1-based)."""
        d = self.decay_at(step)
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].mul_(d).add_(p.detach(), alpha=1 - d)

    def state_dict(self, model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A full model state dict with the averaged weights in place of the trained ones (call on every
        rank: sharded averages are gathered)."""
        # Every rank gathers every average in the same order (FSDP2 gives model_state to rank 0 only).
        averaged = {name: _full(shadow) for name, shadow in self.shadow.items()}
        return {name: averaged.get(name, value) for name, value in model_state.items()}

    @torch.no_grad()
    def load_state_dict(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        missing = sorted(set(self.shadow) - set(tensors))
        if missing:
            raise CheckpointError(f"{where} lacks EMA weights for {', '.join(missing[:3])}"
                                  f"{' ...' if len(missing) > 3 else ''}; it was saved by another model.")
        for name, shadow in self.shadow.items():
            full = tensors[name].to(shadow.dtype)
            if hasattr(shadow, "device_mesh"):  # an FSDP2 shard: keep this rank's part of the full tensor
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full.to(shadow.device_mesh.device_type), shadow.device_mesh,
                                         shadow.placements)
            shadow.copy_(full)


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def average_checkpoints(run_dir: str | Path, last: int) -> Path:
    """Average the model weights of the newest ``last`` complete checkpoints of ``run_dir`` into
    ``run_dir/checkpoints/average-last-K`` (uniform weights, accumulated in float64) -> its path.

    The result loads with ``vlalign.load(run_dir, checkpoint=path)`` (or ``vlalign eval --checkpoint path``);
    it holds no optimizer state, so training never resumes from it, and pruning never removes it.
    Keep enough checkpoints while training (``train.keep_last_k`` >= K).
    """
    if last < 1:
        raise CheckpointError(f"Average over at least 1 checkpoint, got {last}.")
    root = Path(run_dir) / "checkpoints"
    found = complete_checkpoints(root)
    if len(found) < last:
        raise CheckpointError(f"{root} has {len(found)} complete checkpoints, fewer than the {last} to average. "
                              "Average fewer, or train with a larger train.keep_last_k.")
    chosen = found[-last:]
    states = [load_tensors(path / "model.safetensors") for path in chosen]
    for path, state in zip(chosen[:-1], states[:-1]):
        if state.keys() != states[-1].keys() or any(state[k].shape != states[-1][k].shape for k in state):
            raise CheckpointError(f"{path} holds different tensors from {chosen[-1]}; they are not one model.")
    averaged = {}
    for name, newest in states[-1].items():
        if newest.is_floating_point():
            total = sum(state[name].double() for state in states)
            averaged[name] = (total / last).to(newest.dtype)
        else:  # integer buffers (counters) are not averaged: the newest one is kept
            averaged[name] = newest
    meta = load_meta(chosen[-1])
    step = meta["step"]
    out_meta = {"format_version": meta["format_version"], "step": step, "train_state": meta["train_state"],
                "config": meta["config"], "averaged_from": [path.name for path in chosen]}
    final = root / f"average-last-{last}"
    tmp = root / f"{TMP_PREFIX}{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_files(tmp, averaged, None, out_meta)
        commit(tmp, final, step)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"Could not write {final}: {err.strerror or err}.") from err
    return final
