"""Fashion-MNIST: train the ``fashion-mnist-clip`` recipe once per seed, then zero-shot top-1 over the 10 classes
next to linear probes on the same frozen image features, as mean ± std over the seeds. Writes
benchmarks/results/fashion_mnist.{md,json}.

    nice -n 10 python benchmarks/fashion_mnist.py [--seeds 0 1 2] [--set train.steps=100 ...]

Zero-shot is ``vlalign eval --task zeroshot --data fashion-mnist:test`` on the 10k test images, with two prompt
sets: "class", the recipe's 8 caption templates and class names (the wording of the training captions), and
"class (unseen prompts)", 8 other templates with everyday names for six classes
(``vlalign.data.fashion_mnist.unseen_prompts``), wording no training caption uses. The probes are
``--task linear-probe`` on the same images' embeddings (fitted on 60% of the test split, weight decay picked on
20%, scored on the last 20%; and 1/5/10-shot); a probe on the raw pixels of the same split (one figure: it has
no seed) is the reference a learned feature should beat. Needs ``apt-get install dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from vlalign import provenance
from vlalign.api import load
from vlalign.config import RunConfig, apply_overrides, to_dict
from vlalign.data.fashion_mnist import CLASSES, UNSEEN_CLASS_NAMES, UNSEEN_TEMPLATES, templates
from vlalign.data.specs import build_source
from vlalign.eval import run_tasks
from vlalign.eval.linear_probe import probe_suite
from vlalign.eval.tasks import load_arrays
from vlalign.recipes import get_recipe
from vlalign.train import run_training

HERE = Path(__file__).parent
RECIPE = "fashion-mnist-clip"
TEST = "fashion-mnist:test"
SCORES = ("top1", "mean_per_class_recall")
ZEROSHOT_LABELS = {"class": "zero-shot, training captions' prompts",  # label set -> row name
                   "class (unseen prompts)": "zero-shot, unseen prompts"}


def pixel_probe(n: int) -> list[dict]:
    """The linear-probe protocol on raw pixels (scaled to [0, 1]) of the first ``n`` test images."""
    images, _, labels, _ = load_arrays(build_source(TEST), n)
    pixels = torch.from_numpy(np.stack(images).reshape(len(images), -1).astype(np.float32) / 255)  # [N, 784]
    return probe_suite(pixels, torch.tensor(labels), num_classes=10)


def train_and_score(cfg: RunConfig, run_dir: Path) -> dict:
    """One seed: train in ``run_dir`` (which must not hold a run yet), then zero-shot and linear probes."""
    if (run_dir / "checkpoints").exists():
        raise SystemExit(f"{run_dir} holds an earlier run; remove it to train afresh.")
    start = time.perf_counter()
    state = run_training(cfg, run_dir, progress=False)
    train_seconds = time.perf_counter() - start
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    results = run_tasks(load(run_dir), ["zeroshot", "linear-probe"], TEST).results
    return {"seed": cfg.train.seed, "steps": state.step, "samples_seen": state.samples_seen,
            "train_seconds": round(train_seconds, 1),
            "final_train_metrics": {k: last[k] for k in ("loss", "pairs_per_s", "data_wait_fraction") if k in last},
            "zeroshot": [r for r in results if r["task"] == "zeroshot"],
            "linear_probe": [r for r in results if r["task"] == "linear-probe"]}


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1; 0 for a single value) of one score over the seeds."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "per_seed": values}


def over_seeds(runs: list[dict], section: str, key: str) -> dict[str, dict]:
    """``section`` rows ("zeroshot" or "linear_probe") matched across seeds by ``key``: each score's mean_std."""
    keys = [row[key] for row in runs[0][section]]
    return {str(k): {score: mean_std([next(r[score] for r in run[section] if r[key] == k) for run in runs])
                     for score in SCORES} for k in keys}


def cell(stats: dict) -> str:
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def table(summary: dict, runs: list[dict], pixels: list[dict]) -> str:
    first = runs[0]
    zeroshot_n = {row["labels"]: row["n"] for row in first["zeroshot"]}
    probe_n = {str(row["shots"]): row["n"] for row in first["linear_probe"]}
    lines = ["| method | images scored | top-1 | mean per-class recall |", "|---|---|---|---|"]
    for labels, name in ZEROSHOT_LABELS.items():
        stats = summary["zeroshot"][labels]
        lines.append(f"| {name} (`{labels}`) | {zeroshot_n[labels]} | {cell(stats['top1'])} | "
                     f"{cell(stats['mean_per_class_recall'])} |")
    for pixel in pixels:
        shots = str(pixel["shots"])
        stats, what = summary["linear_probe"][shots], "all" if shots == "full" else f"{shots}-shot"
        lines.append(f"| linear probe on the image embeddings, {what} | {probe_n[shots]} | {cell(stats['top1'])} | "
                     f"{cell(stats['mean_per_class_recall'])} |")
        lines.append(f"| linear probe on raw pixels, {what} | {pixel['n']} | {pixel['top1']:.3f} | "
                     f"{pixel['mean_per_class_recall']:.3f} |")
    return "\n".join(lines)


def prompts_section(cfg: RunConfig, runs: list[dict]) -> str:
    """Which prompts each zero-shot row used, and how many of them the run's text context cut short."""
    truncated = {row["labels"]: row["prompts_truncated"] for row in runs[0]["zeroshot"]}
    renamed = ", ".join(f"`{new}` for `{old}`" for old, new in zip(CLASSES, UNSEEN_CLASS_NAMES) if old != new)
    kept = ", ".join(f"`{old}`" for old, new in zip(CLASSES, UNSEEN_CLASS_NAMES) if old == new)
    context = f"{cfg.data.context_length}-token text context"
    return (
        "Zero-shot prompts (a class scores the mean of its prompts' embeddings):\n\n"
        f"- `class`: the {len(templates())} caption templates of the training split "
        f"({', '.join(f'`{t}`' for t in templates())}) with the training class names, i.e. the training captions "
        f"themselves; it measures reading back the training captions' form. Prompts longer than the recipe's "
        f"{context}: {truncated['class']} of {len(CLASSES) * len(templates())}, cut short so that they lose all or "
        f"part of the class name at their end (the training captions are cut alike).\n"
        f"- `class (unseen prompts)`: {len(UNSEEN_TEMPLATES)} templates no training caption uses "
        f"({', '.join(f'`{t}`' for t in UNSEEN_TEMPLATES)}) with everyday class names: {renamed}; {kept} unchanged. "
        f"It measures zero-shot to wording the model was not trained on. Prompts longer than the {context}: "
        f"{truncated['class (unseen prompts)']} of {len(CLASSES) * len(UNSEEN_TEMPLATES)}.\n")


def markdown(cfg: RunConfig, runs: list[dict], summary: dict, pixels: list[dict], stamp: dict) -> str:
    seeds = ", ".join(str(run["seed"]) for run in runs)
    minutes = statistics.fmean(run["train_seconds"] for run in runs) / 60
    losses = ", ".join(f"{run['final_train_metrics']['loss']:.3f}" for run in runs)
    return (
        f"# Fashion-MNIST: zero-shot vs linear probe (`{RECIPE}`)\n\n"
        f"{len(runs)} runs (seeds {seeds}), each {runs[0]['steps']} steps of batch {cfg.data.batch_size} "
        f"({runs[0]['samples_seen']} pairs, {runs[0]['samples_seen'] / 60000:.2f} epochs of the 60k training split) "
        f"in {minutes:.1f} min on average with {cfg.train.threads} torch thread(s) of {os.cpu_count()} CPU cores "
        f"(load average {stamp['load_start']} → {stamp['load_end']}); final training losses {losses}. Scored on "
        f"`{TEST}`; the probes fit on 60% of those images, pick the weight decay on 20% and score the remaining "
        f"{pixels[0]['n']} (the pixel probe uses the same split). Learned features: mean ± sample standard deviation "
        f"over the seeds; the pixel probe has no seed. Chance is 0.100.\n\n"
        + table(summary, runs, pixels) + "\n\n" + prompts_section(cfg, runs) + "\n"
        "Reproduce: `nice -n 10 python benchmarks/fashion_mnist.py --seeds 0 1 2` (or, per seed, "
        "`vlalign train --recipe fashion-mnist-clip --set train.seed=S`, then `vlalign eval --checkpoint "
        "runs/fashion-mnist-clip --task zeroshot --task linear-probe --data fashion-mnist:test`).\n\n"
        + provenance.markdown(stamp) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed of each run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.path=value on the recipe")
    parser.add_argument("--work", default=str(HERE / ".work" / RECIPE), help="parent of the seed-S run directories")
    parser.add_argument("--results", default=str(HERE / "results"))
    args = parser.parse_args()
    began = provenance.start()
    cfg = apply_overrides(get_recipe(RECIPE), args.overrides)
    runs = [train_and_score(apply_overrides(cfg, [f"train.seed={seed}"]), Path(args.work) / f"seed-{seed}")
            for seed in args.seeds]
    pixels = pixel_probe(cfg.eval.zeroshot_n)
    summary = {"zeroshot": over_seeds(runs, "zeroshot", "labels"),
               "linear_probe": over_seeds(runs, "linear_probe", "shots")}
    stamp = provenance.stamp(began, args.seeds, threads=cfg.train.threads)
    print(table(summary, runs, pixels))
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fashion_mnist.json").write_text(json.dumps({
        "stamp": stamp, "recipe": RECIPE, "overrides": args.overrides, "summary": summary, "runs": runs,
        "pixel_probe": pixels, "config": to_dict(cfg)}, indent=1) + "\n")
    (out / "fashion_mnist.md").write_text(markdown(cfg, runs, summary, pixels, stamp))


if __name__ == "__main__":
    main()
