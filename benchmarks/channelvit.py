"""ChannelViT at small scale: ViT vs ChannelViT, each with and without Hierarchical Channel Sampling,
on multi-channel shapes (5 stains) and on 13-band Sentinel-2, scored on channel subsets.

Bao et al. 2023 (arXiv 2309.16108) make three directional claims, checked here:
  1. without HCS, both models collapse when channels are missing;
  2. HCS fixes most of that;
  3. ChannelViT + HCS >= ViT + HCS on average over subsets, most clearly with all channels.

Every variant trains with the same recipe, steps and seed (``vlalign.recipes``: shapes-channelvit /
shapes-stains-vit, sentinel2-channelvit / sentinel2-vit), then runs ``vlalign eval --task channels``.
Writes ``channelvit.json`` and ``channelvit.md`` into ``--results``.

    PYTHONPATH=src python benchmarks/channelvit.py                 # ~15 min on 2 shared CPU cores
    PYTHONPATH=src python benchmarks/channelvit.py --shapes-steps 2000 --sentinel2-steps 1500
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from vlalign import provenance
from vlalign.api import load
from vlalign.config import apply_overrides
from vlalign.eval import evaluate
from vlalign.recipes import get_recipe
from vlalign.train import run_training

DATASETS = {"shapes": ("shapes-stains-vit", "shapes-channelvit"), "sentinel2": ("sentinel2-vit", "sentinel2-channelvit")}
VARIANTS = (("ViT", 0, "none"), ("ViT + HCS", 0, "hcs"), ("ChannelViT", 1, "none"), ("ChannelViT + HCS", 1, "hcs"))
PAPER = ("JUMP-CP, 8 channels, S/16 (Table 2): full channels ViT 52.06 / ChannelViT 66.22 / ViT+HCS 56.87 / "
         "ChannelViT+HCS 68.09; one channel 3.00 / 2.08 / 19.92 / 20.84.")


def run_variant(dataset: str, label: str, recipe: str, sampling: str, steps: int, runs: Path, seed: int) -> dict:
    cfg = get_recipe(recipe)
    cfg = apply_overrides(cfg, [f"model.vision.channel_sampling={sampling}", f"train.steps={steps}",
                                f"train.checkpoint_every={steps}", f"train.seed={seed}"])
    run_dir = runs / f"{dataset}-{label.lower().replace(' + ', '-')}"
    start = time.perf_counter()
    run_training(cfg, run_dir, progress=False)
    train_s = time.perf_counter() - start
    (result,) = evaluate(load(run_dir), ["channels"]).results
    print(f"{dataset:<9} {label:<17} full={result.get('full', float('nan')):.3f} mean={result['mean']:.3f} "
          f"size1={result['by_size']['1']:.3f}  ({train_s:.0f} s training)", flush=True)
    return {"dataset": dataset, "variant": label, "recipe": recipe, "channel_sampling": sampling, "steps": steps,
            "train_seconds": round(train_s, 1), "run_dir": str(run_dir), **result}


TIE = 0.01  # accuracy differences below one point are called ties (n is a few hundred test images)


def verdict(difference: float) -> str:
    return "holds" if difference >= TIE else "does not hold" if difference <= -TIE else "tie (within 1 point)"


def claims(rows: list[dict]) -> list[str]:
    """The paper's three directional claims, judged on one dataset's four rows."""
    by = {r["variant"]: r for r in rows}
    C = len(by["ViT"]["channels"])
    partial = {v: sum(r["by_size"][str(k)] for k in range(1, C)) / (C - 1) for v, r in by.items()}
    lines = []
    for v in ("ViT", "ChannelViT"):
        drop = by[v]["full"] - partial[v]
        lines.append(f"(1) {v} without HCS: full {by[v]['full']:.3f} vs mean over partial sizes {partial[v]:.3f} "
                     f"(drop {drop:+.3f}).")
    for v in ("ViT", "ChannelViT"):
        gain = partial[f"{v} + HCS"] - partial[v]
        lines.append(f"(2) HCS on {v}: partial-size mean {partial[v]:.3f} -> {partial[f'{v} + HCS']:.3f} "
                     f"({gain:+.3f}); {verdict(gain)}.")
    cv, vit = by["ChannelViT + HCS"], by["ViT + HCS"]
    lines.append(f"(3) ChannelViT+HCS vs ViT+HCS: mean {cv['mean']:.3f} vs {vit['mean']:.3f}, full {cv['full']:.3f} vs "
                 f"{vit['full']:.3f}; on the mean: {verdict(cv['mean'] - vit['mean'])}; at full channels: "
                 f"{verdict(cv['full'] - vit['full'])}.")
    return lines


def markdown(rows: list[dict], settings: dict) -> str:
    out = ["# ChannelViT vs ViT, with and without HCS, on channel subsets", "",
           f"Settings: {json.dumps(settings)}", "",
           ("Accuracy (test split) averaged over every evaluated channel subset of each size; `mean` averages the "
            "sizes, `full` is all channels. Subsets: all 2^C-1 for C <= 8; for 13 bands all singles, pairs, "
            "leave-one-out and full, plus 10 fixed-seed subsets of every other size (`vlalign.eval.channels`)."), "",
           f"Paper reference: {PAPER}", ""]
    for dataset in DATASETS:
        subset_rows = [r for r in rows if r["dataset"] == dataset]
        if not subset_rows:
            continue
        sizes = list(subset_rows[0]["by_size"])
        first = subset_rows[0]
        out += [(f"## {dataset} ({len(first['channels'])} channels: {', '.join(first['channels'])}; "
                 f"n={first['n']}, {first['steps']} steps)"), "",
                "| variant | " + " | ".join(f"{k} ch" for k in sizes) + " | mean | full | train s |",
                "|---" * (len(sizes) + 4) + "|"]
        for r in subset_rows:
            out.append(f"| {r['variant']} | " + " | ".join(f"{r['by_size'][k]:.3f}" for k in sizes)
                       + f" | {r['mean']:.3f} | {r['full']:.3f} | {r['train_seconds']:.0f} |")
        out += ["", "Claims:", ""] + [f"- {line}" for line in claims(subset_rows)] + [""]
        if len(first["channels"]) <= 5:
            names = list(first["subsets"])
            out += ["Per subset:", "", "| subset | " + " | ".join(r["variant"] for r in subset_rows) + " |",
                    "|---" * (len(subset_rows) + 1) + "|"]
            out += [f"| {name} | " + " | ".join(f"{r['subsets'][name]:.3f}" for r in subset_rows) + " |"
                    for name in names]
            out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes-steps", type=int, default=600)
    parser.add_argument("--sentinel2-steps", type=int, default=300)
    parser.add_argument("--datasets", default="shapes,sentinel2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="runs/bench-channelvit", help="run directories (resumed if present)")
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()
    began = provenance.start()
    steps = {"shapes": args.shapes_steps, "sentinel2": args.sentinel2_steps}
    rows = []
    for dataset in args.datasets.split(","):
        for label, which, sampling in VARIANTS:
            rows.append(run_variant(dataset, label, DATASETS[dataset][which], sampling, steps[dataset],
                                    Path(args.runs), args.seed))
    settings = {"steps": steps, "seed": args.seed, "torch": torch.__version__, "machine": platform.machine(),
                "threads": 1, "towers": "vit-micro (width 64, depth 2, 2 heads), supervised linear head"}
    stamp = provenance.stamp(began, [args.seed])
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "channelvit.json").write_text(json.dumps({"stamp": stamp, "settings": settings, "rows": rows}, indent=1))
    (results / "channelvit.md").write_text(markdown(rows, settings) + "\n" + provenance.markdown(stamp) + "\n")
    print(f"wrote {results / 'channelvit.md'} and {results / 'channelvit.json'}")


if __name__ == "__main__":
    main()
