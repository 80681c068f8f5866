"""CLIP vs CLIP+FDT on the shapes world (and Fashion-MNIST / OpenMoji when installed), at equal steps
and at equal wall-clock, over several seeds. Writes benchmarks/results/fdt_vs_clip.{md,json}.

    python benchmarks/fdt_vs_clip.py --steps 300 --seeds 0 1 2

Reference point (FDT repository README, CC3M, ViT-B/32): zero-shot ImageNet 15.4 -> 18.4,
COCO retrieval rsum 145.1 -> 189.5. This script measures what small CPU scale shows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from vlalign.api import load
from vlalign.config import apply_overrides
from vlalign.errors import DataError
from vlalign.eval import run_tasks
from vlalign.recipes import get_recipe
from vlalign.train import run_training

RESULTS = Path(__file__).parent / "results"


def headline(results: list[dict]) -> dict[str, float]:
    out = {}
    for r in results:
        if r["task"] in ("zeroshot", "compositional") and r.get("labels") in ("shape+colour", "class"):
            out[f"{r['task']}:{r['data'].split(':')[0]}/top1"] = r["top1"]
        if r["task"] == "retrieval":
            out[f"retrieval:{r['data'].split(':')[0]}/t2i_R@1"] = r["t2i_R@1"]
            out[f"retrieval:{r['data'].split(':')[0]}/rsum"] = sum(r[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def run(recipe: str, steps: int, seed: int, work: Path, extra: list[str]) -> dict:
    out = work / f"{recipe}-s{seed}-n{steps}"
    cfg = apply_overrides(get_recipe(recipe), [f"train.steps={steps}", f"train.seed={seed}",
                                               f"train.checkpoint_every={steps}", *extra])
    start = time.perf_counter()
    run_training(cfg, out, progress=False)
    seconds = time.perf_counter() - start
    model = load(out)
    results = run_tasks(model, ["zeroshot", "retrieval", "compositional"]).results
    for task, spec in (("zeroshot", "fashion-mnist:test"), ("retrieval", "openmoji:test")):
        try:  # the real benchmarks run only when their packages are installed
            results += run_tasks(model, [task], spec).results
        except DataError:
            pass
    return {"recipe": recipe, "seed": seed, "steps": steps, "train_seconds": seconds, **headline(results)}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", default="benchmarks/.work/fdt")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra overrides for both arms")
    args = parser.parse_args()
    work = Path(args.work)
    rows = []
    for seed in args.seeds:
        clip = run("shapes-clip", args.steps, seed, work, args.extra)
        fdt = run("shapes-fdt", args.steps, seed, work, args.extra)
        # Equal wall-clock: give the FDT arm the steps CLIP managed in the same time.
        equal_time_steps = max(1, round(args.steps * clip["train_seconds"] / fdt["train_seconds"]))
        rows += [clip, fdt]
        if equal_time_steps != args.steps:
            rows.append(run("shapes-fdt", equal_time_steps, seed, work, args.extra))
        print(table(rows), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fdt_vs_clip.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / "fdt_vs_clip.md").write_text("# CLIP vs CLIP+FDT (shapes world)\n\n" + table(rows) + "\n")


if __name__ == "__main__":
    main()
