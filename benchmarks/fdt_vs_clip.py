"""CLIP vs CLIP+FDT on the shapes world (and Fashion-MNIST / OpenMoji when installed), at equal steps
and at equal wall-clock, over several seeds. Writes benchmarks/results/fdt_vs_clip.{md,json}.

    python benchmarks/fdt_vs_clip.py --seeds 0 1 2 [--steps N] [--recipes shapes-clip ...]

Reference point (FDT repository README, CC3M, ViT-B/32): zero-shot ImageNet 15.4 -> 18.4,
COCO retrieval rsum 145.1 -> 189.5. This script measures what small CPU scale shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recipe_runs import run, table

from vlalign import provenance
from vlalign.recipes import RECIPES

RESULTS = Path(__file__).parent / "results"


FDT = ["model.head=fdt", "objective.name=fdt"]
DATASETS = ("shapes-clip", "fashion-mnist-clip", "openmoji-clip")  # each CLIP recipe gets an FDT twin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: each recipe's own)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=[r for r in DATASETS if r in RECIPES])
    parser.add_argument("--work", default="benchmarks/.work/fdt")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra overrides for both arms")
    args = parser.parse_args()
    began = provenance.start()
    work = Path(args.work)
    rows = []
    for recipe in args.recipes:
        fdt_label = recipe.replace("-clip", "-fdt")
        for seed in args.seeds:
            clip = run(recipe, args.steps, seed, work, args.extra)
            fdt = run(recipe, args.steps, seed, work, FDT + args.extra, fdt_label)
            # Equal wall-clock: give the FDT arm the steps CLIP managed in the same time.
            equal_time_steps = max(1, round(clip["steps"] * clip["train_seconds"] / fdt["train_seconds"]))
            rows += [clip, fdt]
            if equal_time_steps != clip["steps"]:
                rows.append(run(recipe, equal_time_steps, seed, work, FDT + args.extra, fdt_label))
            print(table(rows), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "fdt_vs_clip.json"
    rerun = {label for recipe in args.recipes for label in (recipe, recipe.replace("-clip", "-fdt"))}
    previous = json.loads(path.read_text()) if path.exists() else None
    kept = [r for r in previous["rows"] if r["recipe"] not in rerun] if previous else []  # datasets not rerun now
    stamp = provenance.with_earlier(provenance.stamp(began, args.seeds), [previous["stamp"]] if kept else [])
    rows = kept + rows
    path.write_text(json.dumps({"stamp": stamp, "rows": rows}, indent=1))
    (RESULTS / "fdt_vs_clip.md").write_text("# CLIP vs CLIP+FDT\n\n" + table(rows) + "\n\n"
                                            + provenance.markdown(stamp) + "\n")


if __name__ == "__main__":
    main()
