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
    root = Path(run_dir) / "checkpoints"
    averaged, meta = _average_last(root, last)
    return _write_weights(root / f"average-last-{last}", averaged, meta)


def average_run(run_dir: str | Path, last: int, out: str | Path) -> Path:
    """``vlalign average RUN --last K --out OUT``: a new run directory ``out`` whose only checkpoint,
    ``checkpoints/step-N`` (N: the newest averaged step), holds the mean of ``run_dir``'s last ``last``
    checkpoints -> ``out``.

    ``out`` gets the run's config, tokenizer and preprocessing, so ``vlalign.load(out)``, ``vlalign eval``,
    ``embed``, ``serve`` and ``export`` use it like any run. It holds no optimizer state: ``vlalign train``
    refuses to resume from it (fine-tune from it with ``model.init_from`` instead).
    """
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a vlalign run directory (no config.yaml).")
    if out.resolve() == run_dir.resolve():
        raise CheckpointError(f"--out {out} is the run being averaged; name a new directory.")
    if (out / "checkpoints").exists() and any((out / "checkpoints").iterdir()):
        raise CheckpointError(f"{out} already holds checkpoints; name a new or empty directory.")
    averaged, meta = _average_last(run_dir / "checkpoints", last)
    out.mkdir(parents=True, exist_ok=True)
    for path in run_dir.iterdir():  # config, tokenizer, preprocessing, cached descriptions: what loading reads
        if path.is_file() and path.name not in RUN_OUTPUTS:
            shutil.copy2(path, out / path.name)
    (out / "checkpoints").mkdir(exist_ok=True)
    _write_weights(out / "checkpoints" / f"step-{meta['step']}", averaged,
                   meta | {"averaged_from": [str(run_dir / "checkpoints" / name) for name in meta["averaged_from"]]})
    return out


# Files of a run that describe its training or evaluation, not the model: not copied into an averaged run.
RUN_OUTPUTS = ("metrics.jsonl", "eval.json", "report.html")


def _average_last(root: Path, last: int) -> tuple[dict[str, torch.Tensor], dict]:
    """The uniform mean of the newest ``last`` checkpoints under ``root`` (float64 accumulation; integer
    tensors are the newest one's) and the metadata of the averaged checkpoint."""
    if last < 1:
        raise CheckpointError(f"Average over at least 1 checkpoint, got {last}.")
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
    return averaged, {"format_version": meta["format_version"], "step": meta["step"],
                      "train_state": meta["train_state"], "config": meta["config"],
                      "averaged_from": [path.name for path in chosen]}


def _write_weights(final: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write and commit a weights-only checkpoint directory ``final`` (atomically, as training does)."""
    tmp = final.parent / f"{TMP_PREFIX}{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_files(tmp, tensors, None, meta)
        commit(tmp, final, meta["step"])
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"Could not write {final}: {err.strerror or err}.") from err
    return final
