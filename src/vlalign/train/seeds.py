"""One config, several seeds: ``run_seeds(cfg, [0, 1, 2], out)`` trains and evaluates the config once per
seed (``train.seed``) into ``out/seed-S/``, each a normal run directory, then aggregates their eval metrics
into ``out/seeds.json``, ``out/seeds.md`` and ``out/report.html`` (``vlalign.eval.aggregate``).

Rerunning skips the seeds that are finished (trained to ``train.steps`` and evaluated at that step) and
resumes an interrupted one from its newest complete checkpoint, as ``vlalign train`` does for one run.
With ``parallel=N`` the seeds train in N processes at once, ``train.threads`` shared between them
(``vlalign.train.processes``: SIGTERM stops them all at a step boundary, saved).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from vlalign.checkpoint import latest_checkpoint
from vlalign.config import RunConfig
from vlalign.errors import ConfigError
from vlalign.eval.aggregate import Summary, markdown_table, summarize
from vlalign.train.processes import run_in_processes

log = logging.getLogger(__name__)

__all__ = ["parse_seeds", "run_seeds", "seed_dir", "summarize", "write_summary"]


def parse_seeds(spec: str, flag: str = "--seeds") -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,2,5"`` -> [0, 2, 5]; ranges and lists mix (``"0-2,7"``). Seeds are
    whole numbers >= 0, each at most once; anything else is a ConfigError that names ``flag``."""
    example = f"e.g. {flag} 0-4 or {flag} 0,2,5"
    seeds: list[int] = []
    parts = [part.strip() for part in str(spec).split(",")]
    if not any(parts):
        raise ConfigError(f"{flag} needs at least one seed, {example}; got {spec!r}.")
    for part in parts:
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part, re.ASCII)
        if not match:
            raise ConfigError(f"{flag}: '{part}' is not a seed (a whole number >= 0) or a range A-B of them, "
                              f"{example}; got {spec!r}.")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise ConfigError(f"{flag}: the range '{part}' runs backwards; write it low-high, e.g. {last}-{first}.")
        seeds.extend(range(first, last + 1))
    repeated = sorted(s for s, count in Counter(seeds).items() if count > 1)
    if repeated:
        raise ConfigError(f"{flag} names seed {', '.join(map(str, repeated))} more than once: {spec!r}.")
    return seeds


def seed_dir(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def seed_config(cfg: RunConfig, seed: int, threads: int | None = None) -> RunConfig:
    """A copy of ``cfg`` with ``train.seed`` (and ``train.threads``, if given) set."""
    cfg = copy.deepcopy(cfg)
    cfg.train.seed = seed
    if threads is not None:
        cfg.train.threads = threads
    return cfg


def split_threads(threads: int, parallel: int) -> int:
    """Threads for each of ``parallel`` runs sharing ``threads`` (0 = all cores), at least one each."""
    total = threads if threads > 0 else (os.cpu_count() or 1)
    return max(1, total // parallel)


def trained_step(run_dir: Path) -> int:
    """The step of the run's newest complete checkpoint (0 without one)."""
    newest = latest_checkpoint(run_dir / "checkpoints")
    return int(newest.name.removeprefix("step-")) if newest else 0


def evaluated_step(run_dir: Path) -> int | None:
    """The step the run's ``eval.json`` was written at, or None without a readable one."""
    try:
        return int(json.loads((run_dir / "eval.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_finished(cfg: RunConfig, run_dir: Path, evaluate: bool = True) -> bool:
    """Trained to ``cfg.train.steps`` and, when ``evaluate``, evaluated at that step."""
    if trained_step(run_dir) < cfg.train.steps:
        return False
    return not evaluate or (evaluated_step(run_dir) or 0) >= cfg.train.steps


def train_and_evaluate(cfg: RunConfig, run_dir: Path, evaluate: bool = True, progress: bool = True) -> None:
    """One seed: train (or resume) unless already trained to ``train.steps``; then evaluate unless done."""
    from vlalign.api import load
    from vlalign.eval import evaluate as run_eval
    from vlalign.train.trainer import run_training

    if trained_step(run_dir) < cfg.train.steps:
        run_training(cfg, run_dir, progress=progress)
    if evaluate and (evaluated_step(run_dir) or 0) < cfg.train.steps:
        run_eval(load(run_dir), cfg.eval.tasks)


def run_seeds(cfg: RunConfig, seeds: list[int], out: str | Path, *, evaluate: bool = True, parallel: int = 1,
              progress: bool = True, say: Callable[[str], None] = log.info) -> Summary | None:
    """Train and evaluate ``cfg`` once per seed into ``out/seed-S/``; write and return the summary over the
    seeds (None when ``evaluate`` is off or the config has no eval tasks). ``say`` gets one line per seed."""
    if not seeds:
        raise ConfigError("run_seeds needs at least one seed.")
    if parallel < 1:
        raise ConfigError(f"--seeds-parallel must be at least 1, got {parallel}.")
    out = Path(out)
    evaluate = evaluate and bool(cfg.eval.tasks)
    pending = []
    for seed in seeds:
        run_dir = seed_dir(out, seed)
        if is_finished(cfg, run_dir, evaluate):
            say(f"seed {seed}: finished, skipped ({run_dir})")
            continue
        step = trained_step(run_dir)
        say(f"seed {seed}: " + (f"resuming from step {step}" if step else "training") + f" -> {run_dir}")
        pending.append(seed)
    workers = min(parallel, len(pending))
    if workers <= 1:
        for seed in pending:
            train_and_evaluate(seed_config(cfg, seed), seed_dir(out, seed), evaluate, progress)
    else:
        threads = split_threads(cfg.train.threads, workers)
        run_in_processes({f"seed {seed}": (train_and_evaluate, (seed_config(cfg, seed, threads), seed_dir(out, seed),
                                                                evaluate, False)) for seed in pending}, workers, say)
    if not evaluate:
        return None
    summary = summarize({str(seed): seed_dir(out, seed) for seed in seeds})
    write_summary(summary, out, f"vlalign seed sweep: {cfg.name}, seeds {', '.join(map(str, seeds))}",
                  {"config": cfg.name, "steps": cfg.train.steps, "seeds": list(seeds)})
    return summary


def write_summary(summary: Summary, out: str | Path, title: str = "", about: dict | None = None) -> dict[str, Path]:
    """``seeds.json`` (``about``, then every metric's mean, std, min, max, n and per-run values), ``seeds.md``
    (the same as a table) and ``report.html`` (that table and links to the runs' own reports) in ``out``."""
    from vlalign.eval.report import write_sweep_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "seeds.json", "md": out / "seeds.md"}
    paths["json"].write_text(json.dumps({**(about or {}), **summary.as_dict(relative_to=out)}, indent=1) + "\n")
    heading = f"# {title}\n\n" if title else ""
    paths["md"].write_text(heading + "std: sample standard deviation (n - 1).\n\n" + markdown_table(summary))
    paths["html"] = write_sweep_report(out, summary, title)
    return paths
