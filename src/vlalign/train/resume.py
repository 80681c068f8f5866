"""Checkpoint a training run on every rank together, and resume it exactly.

A checkpoint holds everything the next step depends on: model, optimizer (with its learning
rate), counters, and per rank the python/numpy/torch RNG states and the data-loader position.
The learning-rate schedule is a pure function of the step, so the step is its whole state.
All ranks take part in a save (sharded state is gathered, per-rank state is sent to rank 0), rank
0 writes, and every rank learns whether the write committed, so all fail or continue together.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from vlalign import dist
from vlalign.checkpoint import (
    load_checkpoint,
    load_ema,
    load_meta,
    missing_components,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vlalign.config import STRUCTURAL_FIELDS, RunConfig, diff, dump_yaml, to_dict
from vlalign.errors import CheckpointError
from vlalign.train.step import TrainState

log = logging.getLogger(__name__)


def save(run_dir: Path, model, optimizer, loader, state: TrainState, cfg: RunConfig, strategy, ema=None) -> Path:
    model_state = strategy.model_state(model)
    optimizer_state = strategy.optimizer_state(model, optimizer)
    ema_state = ema.state_dict(model_state) if ema is not None else None
    ranks = dist.gather_object({"rng": rng_state(), "loader": loader.state_dict()})
    path, error = None, None
    if dist.is_main():
        meta = {"train_state": vars(state).copy(), "config": to_dict(cfg), "world_size": dist.world_size(),
                "ranks": ranks}
        try:
            path = save_checkpoint(run_dir / "checkpoints", state.step, model_state, optimizer_state, meta,
                                   cfg.train.keep_last_k, ema_state)
        except CheckpointError as err:
            error = str(err)
    path, error = dist.broadcast_object((str(path) if path else None, error))
    if error:
        raise CheckpointError(error)
    return Path(path)


def restore(path: Path, model, optimizer, loader, strategy, ema=None) -> TrainState:
    """Load every component saved at ``path`` into the live objects; fails loudly on anything missing.
    An EMA the checkpoint lacks (it was turned on for the resumed run) starts from the restored weights."""
    model_state, optimizer_state, meta = load_checkpoint(path)
    missing = missing_components(path, meta)
    if missing:
        raise CheckpointError(f"Checkpoint {path} cannot resume training: it lacks {', '.join(missing)}. "
                              "Delete it to resume from an earlier one, or start a new run with another --out.")
    if meta["world_size"] != dist.world_size():
        raise CheckpointError(
            f"Checkpoint {path} was written by {meta['world_size']} processes, and this run has "
            f"{dist.world_size()}. Resume with the same number (--nproc {meta['world_size']}): every rank's RNG "
            "and data position are saved separately.")
    strategy.load(model, optimizer, model_state, optimizer_state, str(path))
    if ema is not None:
        ema_state = load_ema(path)
        if ema_state is not None:
            ema.load_state_dict(ema_state, str(path))
        else:
            log.warning("%s has no EMA weights; the moving average starts from its weights", path)
            ema.load_state_dict(model_state, str(path))
    mine = meta["ranks"][dist.rank()]
    loader.load_state_dict(mine["loader"])
    set_rng_state(mine["rng"])
    return TrainState(**meta["train_state"])


def check_resumable(cfg: RunConfig, run_dir: Path, checkpoint: Path) -> None:
    """Refuse to resume with a different structure (shapes, tokens, global batch), listing each field."""
    saved, new = load_meta(checkpoint).get("config"), to_dict(cfg)
    if not isinstance(saved, dict):
        raise CheckpointError(f"Checkpoint {checkpoint} lacks its config; it is not a vlalign training checkpoint.")
    saved = _with_defaults(saved)
    lines = []
    for field in STRUCTURAL_FIELDS:
        a, b = _lookup(saved, field), _lookup(new, field)
        if a != b:
            lines += diff({field: a}, {field: b}) if isinstance(a, dict) and isinstance(b, dict) else [
                f"{field}: {a!r} -> {b!r}"]
    if lines:
        raise CheckpointError(
            f"Cannot resume {run_dir} from {checkpoint.name}: the config differs from the one it was trained with "
            "in structural fields (saved -> requested):\n  " + "\n  ".join(lines)
            + "\nUse another --out directory to start a new run, or set these values back.")
    config_path = run_dir / "config.yaml"
    if dist.is_main() and (not config_path.is_file() or yaml.safe_load(config_path.read_text()) != new):
        config_path.write_text(dump_yaml(cfg))  # e.g. more steps: the run continues with them


def _with_defaults(saved: dict, defaults: dict | None = None) -> dict:
    """The saved config with fields added since it was written filled in by their defaults, so a newer
    vlalign resumes an older run unless a field that exists in both really differs."""
    defaults = to_dict(RunConfig()) if defaults is None else defaults
    out = dict(defaults)
    for key, value in saved.items():
        out[key] = _with_defaults(value, defaults[key]) if isinstance(value, dict) and isinstance(
            defaults.get(key), dict) else value
    return out


def _lookup(data: dict, path: str):
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data
