"""The training loop: one step function and a short loop around it.

Resume precedence (checked in this order):
1. the run directory has a committed checkpoint -> continue from the newest one (the saved
   config must match the requested one in every structural field);
2. otherwise start fresh, writing ``config.yaml`` and ``tokenizer.json`` first.
A run that already reached ``train.steps`` does no step and returns at once.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vlalign import dist
from vlalign.checkpoint import latest_checkpoint, load_checkpoint, optimizer_from_flat, rng_state, save_checkpoint, set_rng_state
from vlalign.config import STRUCTURAL_FIELDS, RunConfig, diff, dump_yaml, to_dict
from vlalign.errors import CheckpointError, NonFiniteError, VlalignError
from vlalign.train.optim import build_optimizer, global_norm, lr_at, set_lr
from vlalign.train.setup import build_components, seed_everything

log = logging.getLogger(__name__)

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM: the run saved a checkpoint and can be resumed


@dataclass
class TrainState:
    """Counters saved with every checkpoint."""

    step: int = 0  # optimizer steps taken
    samples_seen: int = 0
    skipped_steps: int = 0  # non-finite steps skipped under nonfinite_policy="skip"
    consecutive_nonfinite: int = 0


class GracefulStop(VlalignError):
    """Raised after a SIGTERM once the checkpoint for the current step is committed."""

    exit_code = SIGTERM_EXIT_CODE


def run_training(cfg: RunConfig, run_dir: str | Path, progress: bool = True) -> TrainState:
    run_dir = Path(run_dir)
    seed_everything(cfg.train.seed, cfg.train.deterministic, cfg.train.threads)
    rank, world = dist.rank(), dist.world_size()
    resume_from = latest_checkpoint(run_dir / "checkpoints")
    if resume_from is not None:
        check_resumable(cfg, run_dir)
    elif dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    parts = build_components(cfg, run_dir, rank, world)
    model, loader, objective = parts.model, parts.loader, parts.objective
    optimizer = build_optimizer(model, cfg.optim)
    state = TrainState()
    if resume_from is not None:
        state = restore(resume_from, model, optimizer, loader)
        log.info("resuming from %s", resume_from)
    metrics_path = run_dir / "metrics.jsonl"
    truncate_metrics(metrics_path, state.step)
    if state.step >= cfg.train.steps:
        return state

    stop_requested = install_sigterm_handler()
    bar = tqdm(total=cfg.train.steps, initial=state.step, disable=not (progress and dist.is_main()),
               desc="train", unit="step", dynamic_ncols=True)
    batches = iter(loader)
    window_start, window_pairs, data_wait = time.perf_counter(), 0, 0.0
    while state.step < cfg.train.steps:
        t0 = time.perf_counter()
        batch = next(batches)
        data_wait += time.perf_counter() - t0
        step_metrics = train_step(model, objective, optimizer, batch, state, cfg)
        window_pairs += batch["text_ids"].shape[0] * world
        bar.update(1)
        if state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps:
            elapsed = time.perf_counter() - window_start
            record = {"step": state.step, **step_metrics, "pairs_per_s": window_pairs / elapsed,
                      "data_wait_fraction": data_wait / elapsed, "samples_seen": state.samples_seen,
                      "epoch": loader.epoch, "data/skipped": loader.skips.skipped,
                      "skipped_steps": state.skipped_steps}
            if dist.is_main():
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{step_metrics['loss']:.3f}", pairs_s=f"{record['pairs_per_s']:.0f}")
            window_start, window_pairs, data_wait = time.perf_counter(), 0, 0.0
        stopping = dist.all_reduce_max(float(stop_requested())) > 0
        if state.step % cfg.train.checkpoint_every == 0 or state.step == cfg.train.steps or stopping:
            checkpoint(run_dir, model, optimizer, loader, state, cfg)
        if stopping:
            bar.close()
            raise GracefulStop(f"stopped by SIGTERM at step {state.step}; checkpoint saved")
    bar.close()
    return state


def train_step(model, objective, optimizer, batch: dict, state: TrainState, cfg: RunConfig) -> dict[str, float]:
    """Forward, loss, non-finite check (on all ranks together), backward, clip, update."""
    model.train()
    set_lr(optimizer, lr_at(state.step, cfg.train.steps, cfg.optim))
    out = model(batch["images"], batch["text_ids"], batch["text_mask"], batch["channel_ids"])
    loss, metrics = objective(out, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if dist.world_size() > 1:
        for p in params:
            torch.distributed.all_reduce(p.grad)
            p.grad /= dist.world_size()
    grad_norm = global_norm(p.grad for p in params)
    bad = not (math.isfinite(loss.item()) and math.isfinite(grad_norm))
    if dist.all_reduce_max(float(bad)) > 0:
        return handle_nonfinite(optimizer, state, cfg, loss.item(), grad_norm)
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
    optimizer.step()
    scale = getattr(model, "logit_scale", None)  # a text-only language model has none
    if scale is not None:
        with torch.no_grad():  # CLIP clamps the temperature so logits never exceed max_logit_scale
            scale.clamp_(max=math.log(cfg.objective.max_logit_scale))
    state.step += 1
    state.samples_seen += batch["text_ids"].shape[0] * dist.world_size()
    state.consecutive_nonfinite = 0
    scales = {"logit_scale": scale.exp().item()} if scale is not None else {}
    return {"loss": loss.item(), "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
            "param_norm": global_norm(model.parameters()), **scales, **metrics}


def handle_nonfinite(optimizer, state: TrainState, cfg: RunConfig, loss: float, grad_norm: float) -> dict:
    """The update is never applied. Policy "error" stops; "skip" counts and stops after K in a row."""
    optimizer.zero_grad(set_to_none=True)
    where = f"step {state.step + 1} (loss={loss}, grad_norm={grad_norm})"
    if cfg.train.nonfinite_policy == "error":
        raise NonFiniteError(f"Non-finite loss or gradient at {where}; the weights were not updated. "
                             "Lower optim.lr, check the data, or set train.nonfinite_policy=skip.")
    state.skipped_steps += 1
    state.consecutive_nonfinite += 1
    if state.consecutive_nonfinite > cfg.train.max_consecutive_nonfinite:
        raise NonFiniteError(f"{state.consecutive_nonfinite} non-finite steps in a row, the last at {where}: "
                             f"more than train.max_consecutive_nonfinite={cfg.train.max_consecutive_nonfinite}.")
    log.warning("skipped non-finite %s", where)
    return {"loss": loss, "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm, "param_norm": float("nan"),
            "logit_scale": float("nan")}


def checkpoint(run_dir: Path, model, optimizer, loader, state: TrainState, cfg: RunConfig) -> None:
    if not dist.is_main():
        return
    payload = {"train_state": vars(state).copy(), "loader": loader.state_dict(), "rng": rng_state(),
               "config": to_dict(cfg)}
    save_checkpoint(run_dir / "checkpoints", state.step, model, optimizer, payload, cfg.train.keep_last_k)


def restore(path: Path, model, optimizer, loader) -> TrainState:
    model_tensors, opt_tensors, payload = load_checkpoint(path)
    model.load_state_dict(model_tensors)
    if opt_tensors is not None:
        optimizer.load_state_dict(optimizer_from_flat(opt_tensors, payload["optimizer"]))
    loader.load_state_dict(payload["loader"])
    set_rng_state(payload["rng"])
    return TrainState(**payload["train_state"])


def check_resumable(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse to resume into a run whose structure differs; list the differing fields."""
    import yaml

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise CheckpointError(f"{run_dir} has checkpoints but no config.yaml; it is not a vlalign run directory.")
    saved, new = yaml.safe_load(saved_path.read_text()), to_dict(cfg)
    lines = []
    for field in STRUCTURAL_FIELDS:
        a, b = _lookup(saved, field), _lookup(new, field)
        lines += diff({field: a}, {field: b}) if a != b else []
    if lines:
        raise CheckpointError(
            f"Cannot resume {run_dir}: the config differs from the saved one in structural fields:\n  "
            + "\n  ".join(lines) + f"\nUse another --out directory, or restore these values.")
    if saved != new:
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))  # e.g. more steps: the run continues with them


def _lookup(data: dict, path: str):
    for part in path.split("."):
        data = data.get(part, {}) if isinstance(data, dict) else None
    return data


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written after the checkpoint we resume from): no duplicate steps."""
    if not dist.is_main() or not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def install_sigterm_handler():
    """SIGTERM sets a flag; the loop stops at the next step boundary after saving a checkpoint."""
    requested = {"flag": False}

    def handler(signum, frame):
        requested["flag"] = True

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a test runner thread): no handler
        pass
    return lambda: requested["flag"]
