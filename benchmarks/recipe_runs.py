"""Shared by the recipe-comparison benchmarks: train a recipe, evaluate it on the shapes world and,
when installed, Fashion-MNIST zero-shot and OpenMoji retrieval, and tabulate rows over seeds."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from vlalign.api import load
from vlalign.config import apply_overrides
from vlalign.eval import run_tasks
from vlalign.recipes import get_recipe
from vlalign.train import run_training


def headline(results: list[dict]) -> dict[str, float]:
    out = {}
    for r in results:
        if r["task"] in ("zeroshot", "compositional") and r.get("labels") in ("shape+colour", "class"):
            out[f"{r['task']}:{r['data'].split(':')[0]}/top1"] = r["top1"]
        if r["task"] == "linear-probe" and r["shots"] == "full" and r.get("labels") in ("shape+colour", "class"):
            out[f"linear-probe:{r['data'].split(':')[0]}/top1"] = r["top1"]
        if r["task"] == "retrieval":
            out[f"retrieval:{r['data'].split(':')[0]}/t2i_R@1"] = r["t2i_R@1"]
            out[f"retrieval:{r['data'].split(':')[0]}/rsum"] = sum(r[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def run(recipe: str, steps: int | None, seed: int, work: Path, extra: list[str], label: str | None = None) -> dict:
    """Train ``recipe`` (plus ``extra`` overrides) for ``steps`` (None: the recipe's own), evaluate it on
    its own eval tasks and data, and return one table row named ``label`` (default: the recipe)."""
    label = label or recipe
    cfg = get_recipe(recipe)
    steps = steps or cfg.train.steps
    cfg = apply_overrides(cfg, [f"train.steps={steps}", f"train.seed={seed}", f"train.checkpoint_every={steps}",
                                *extra])
    out = work / f"{label}-s{seed}-n{steps}"
    start = time.perf_counter()
    run_training(cfg, out, progress=False)
    seconds = time.perf_counter() - start
    model = load(out)
    # Shapes runs: the tasks' own shapes splits; other data: the run's held-out split.
    spec = None if cfg.data.train.startswith("shapes:") else cfg.data.eval
    results = [r for task in cfg.eval.tasks for r in run_tasks(model, [task], spec).results]
    return {"recipe": label, "seed": seed, "steps": steps, "train_seconds": seconds, **headline(results)}


def table(rows: list[dict]) -> str:
    keys = sorted({k for r in rows for k in r if "/" in k})
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["steps"]), []).append(r)
    lines = ["| recipe | steps | seeds | train s | " + " | ".join(keys) + " |",
             "|" + "---|" * (4 + len(keys))]
    for (recipe, steps), rs in groups.items():
        def cell(k):
            vals = [r[k] for r in rs if k in r]
            if not vals:
                return "–"
            spread = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
            return f"{statistics.mean(vals):.3f}{spread}"
        lines.append(f"| {recipe} | {steps} | {len(rs)} | {statistics.mean(r['train_seconds'] for r in rs):.0f} | "
                     + " | ".join(cell(k) for k in keys) + " |")
    return "\n".join(lines)
