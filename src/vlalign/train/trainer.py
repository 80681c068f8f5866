"""The training loop.

Resume precedence (checked in this order; rank 0 decides and every rank follows):
1. the run directory has a committed checkpoint -> continue from the newest one (the config it was
   saved with must match the requested one in every structural field);
2. otherwise start fresh: rank 0 writes ``config.yaml``, ``tokenizer.json`` and ``preprocess.json``,
   then the other ranks read them.
A run that already reached ``train.steps`` does no step and returns at once.

Stopping: SIGTERM (on any rank) sets a flag; at the next step boundary every rank agrees to stop,
a checkpoint is saved and ``GracefulStop`` is raised (the CLI exits with code 143). A non-finite
loss or gradient stops (or skips) the step on every rank before the update (see ``step.py``).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from vlalign import dist
from vlalign.checkpoint import latest_checkpoint
from vlalign.config import RunConfig, dump_yaml
from vlalign.device import to_device
from vlalign.errors import CheckpointError, ConfigError, VlalignError
from vlalign.objectives import EMBEDDING_OBJECTIVES
from vlalign.progress import progress as progress_bar
from vlalign.pretrained import adopt_init
from vlalign.train.acceleration import compile_model
from vlalign.train.averaging import ExponentialMovingAverage
from vlalign.train.curriculum import resize_batch, resolution_at
from vlalign.train.distributed import build_strategy, local_world_size
from vlalign.train.heap import keep_heap
from vlalign.train.metrics import MetricsLog, Throughput
from vlalign.train.optim import build_optimizer, set_implementation
from vlalign.train.precision import precision_name, resolve_precision
from vlalign.train.resume import check_resumable, restore, save
from vlalign.train.setup import build_components, resolve_threads, seed_everything
from vlalign.train.sinks import open_sinks
from vlalign.train.step import TrainState, batch_size, forward_kwargs, train_step

log = logging.getLogger(__name__)

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM: the run saved a checkpoint and can be resumed


class GracefulStop(VlalignError):
    """Raised after a SIGTERM once the checkpoint for the current step is committed."""

    exit_code = SIGTERM_EXIT_CODE
    label = "stopped"


def run_training(cfg: RunConfig, run_dir: str | Path, progress: bool = True) -> TrainState:
    run_dir = Path(run_dir)
    cfg = adopt_init(cfg)  # a run from an outside CLIP checkpoint takes its architecture
    check_layout(cfg)
    seed_everything(cfg.train.seed, cfg.train.deterministic, resolve_threads(cfg.train.threads, local_world_size()))
    if cfg.train.keep_heap:
        keep_heap()
    resume_from = dist.broadcast_object(latest_checkpoint(run_dir / "checkpoints") if dist.is_main() else None)
    if resume_from is not None:
        check_resumable(cfg, run_dir, resume_from)
    elif dist.is_main():
        start_run_dir(run_dir, cfg)
    if dist.is_main():  # rank 0 trains and saves the tokenizer; the others then load it
        parts = build_components(cfg, run_dir, dist.rank(), dist.world_size())
    dist.barrier()
    if not dist.is_main():
        parts = build_components(cfg, run_dir, dist.rank(), dist.world_size())
    strategy = build_strategy(cfg.train.parallel if dist.world_size() > 1 else "replicate")
    model, loader, objective, teachers = strategy.wrap(parts.model), parts.loader, parts.objective, parts.teachers
    optimizer = build_optimizer(model, cfg.optim)  # after wrapping: FSDP2 replaces the parameters
    ema = ExponentialMovingAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    state = TrainState()
    if resume_from is not None:
        state = restore(resume_from, model, optimizer, loader, strategy, ema)
        set_implementation(optimizer, cfg.optim.implementation)
        log.info("resuming from %s", resume_from)
        if teachers is not None:
            teachers.restart_momentum(model)
    # nvfp4-sim quantises inside the linear layers themselves; the rest of the step stays fp32.
    dtype = (torch.float32 if cfg.train.precision == "nvfp4-sim"
             else resolve_precision(cfg.train.precision, next(model.parameters()).device.type))
    # Every logged step names it: auto resolves per machine, so a run resumed elsewhere may change precision.
    precision = precision_name(cfg.train.precision, dtype)
    if cfg.train.compile:
        compile_model(model)
    metrics = MetricsLog(run_dir / "metrics.jsonl", dist.is_main())
    metrics.truncate(state.step)
    if state.step >= cfg.train.steps:
        return state
    if dist.is_main():
        metrics.sinks = open_sinks(cfg, run_dir, state.step)

    if parts.heldout is not None and state.step == 0:  # the LM's text loss before this run changes it
        metrics.write({"step": 0, "samples_seen": 0, "text/heldout_loss": parts.heldout.loss(model)})
    throughput = Throughput(dist.world_size())
    bar = progress_bar(total=cfg.train.steps, initial=state.step, disable=not (progress and dist.is_main()),
                       desc="train", unit="step")
    batches = iter(loader)
    measured_size = None
    with sigterm_flag() as stop_requested:
        while state.step < cfg.train.steps:
            t0 = time.perf_counter()
            batch = to_device(next(batches), parts.device)
            throughput.data_wait += time.perf_counter() - t0
            size = resolution_at(state.step, cfg.train.steps, cfg.data.resolution_schedule)
            batch = resize_batch(batch, size)
            if not throughput.flops_per_sample or size != measured_size:  # a new curriculum size costs anew
                throughput.measure_model(model, batch, forward_kwargs(objective))
                throughput.reset()
                measured_size = size
            if teachers is not None:  # CTP: the previous-task and momentum models' embeddings of this batch
                teachers.annotate(batch)
            step_metrics = train_step(model, objective, optimizer, batch, state, cfg, strategy, dtype)
            stopping = dist.all_reduce_max(float(stop_requested())) > 0
            if step_metrics is not None and ema is not None:
                ema.update(model, state.step)
            if step_metrics is not None and teachers is not None:
                teachers.update(model)
            if step_metrics is not None:  # the update was applied (not a skipped non-finite step)
                throughput.pairs += batch_size(batch) * dist.world_size()
                bar.set_postfix(loss=f"{step_metrics['loss']:.3f}")  # before update: its line shows this step's loss
                bar.update(1)
                if state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps:
                    metrics.write({"step": state.step, **step_metrics, **throughput.record(),
                                   "samples_seen": state.samples_seen, "epoch": loader.epoch,
                                   "data/skipped": int(dist.all_reduce_sum(loader.skips.skipped)),
                                   "skipped_steps": state.skipped_steps, "precision": precision,
                                   **({"image_size": size} if size else {}),
                                   **text_retention_metrics(parts, model)})
            periodic = step_metrics is not None and (
                state.step % cfg.train.checkpoint_every == 0 or state.step == cfg.train.steps)
            if periodic or stopping:
                path = save(run_dir, model, optimizer, loader, state, cfg, strategy, ema)
            if stopping:
                bar.close()
                metrics.close()
                raise GracefulStop(f"Stopped by SIGTERM at step {state.step}; checkpoint {path} is saved. "
                                   "Rerun the same command to resume.")
    bar.close()
    metrics.close()
    return state


def text_retention_metrics(parts, model) -> dict:
    """DeepSeek-VL's mixture and retention (data.text_ratio / data.text_heldout): the share of text-only
    batches so far and the language model's held-out text loss."""
    out = {"mix/text_fraction": parts.loader.text_fraction} if hasattr(parts.loader, "text_fraction") else {}
    if parts.heldout is not None:
        out["text/heldout_loss"] = parts.heldout.loss(model)
    return out


def check_layout(cfg: RunConfig) -> None:
    """Settings that depend on the number of processes, checked before any work."""
    world = dist.world_size()
    if cfg.data.batch_size % world:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is the global batch and must divide evenly over "
                          f"{world} processes.")
    per_rank = cfg.data.batch_size // world
    if per_rank % cfg.train.accum_steps:
        raise ConfigError(f"The per-process batch ({per_rank} = data.batch_size / {world} processes) must be a "
                          f"multiple of train.accum_steps={cfg.train.accum_steps}.")
    if cfg.train.accum_steps > 1 and cfg.objective.name not in EMBEDDING_OBJECTIVES:
        raise ConfigError(f"train.accum_steps={cfg.train.accum_steps} needs a loss on embeddings only (GradCache): "
                          f"one of {', '.join(sorted(EMBEDDING_OBJECTIVES))}; objective.name is "
                          f"'{cfg.objective.name}'. Use a smaller data.batch_size with train.accum_steps=1.")
    if cfg.train.parallel != "replicate" and world == 1:
        log.warning("train.parallel=%s has no effect in a single process", cfg.train.parallel)


def start_run_dir(run_dir: Path, cfg: RunConfig) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    except OSError as err:
        raise CheckpointError(f"Cannot create the run directory {run_dir}: {err.strerror or err}. "
                              "Choose another --out.") from None


@contextmanager
def sigterm_flag() -> Iterator[Callable[[], bool]]:
    """While training, SIGTERM only sets a flag; the loop stops at the next step boundary."""
    requested = {"flag": False}

    def handler(signum, frame):
        requested["flag"] = True

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. a test runner thread): no handler
        previous = None
    try:
        yield lambda: requested["flag"]
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
