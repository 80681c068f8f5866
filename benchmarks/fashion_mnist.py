"""Fashion-MNIST: train the ``fashion-mnist-clip`` recipe, then zero-shot top-1 over the 10 classes next to
linear probes on the same frozen image features. Writes benchmarks/results/fashion_mnist.{md,json}.

    nice -n 10 python benchmarks/fashion_mnist.py [--set train.steps=100 ...]

Zero-shot is ``vlalign eval --task zeroshot --data fashion-mnist:test`` (the 10k test images, the
recipe's 8 caption templates as the prompt ensemble). The probes are ``--task linear-probe`` on the
same images' embeddings (fitted on 60% of the test split, weight decay picked on 20%, scored on the
last 20%; and 1/5/10-shot); a probe on the raw pixels of the same split is the reference a learned
feature should beat. Needs ``apt-get install dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from vlalign import provenance
from vlalign.api import load
from vlalign.config import apply_overrides, to_dict
from vlalign.data.specs import build_source
from vlalign.eval import run_tasks
from vlalign.eval.linear_probe import probe_suite
from vlalign.eval.tasks import load_arrays
from vlalign.recipes import get_recipe
from vlalign.train import run_training

HERE = Path(__file__).parent
RECIPE = "fashion-mnist-clip"
TEST = "fashion-mnist:test"


def pixel_probe(n: int) -> list[dict]:
    """The linear-probe protocol on raw pixels (scaled to [0, 1]) of the first ``n`` test images."""
    images, _, labels, _ = load_arrays(build_source(TEST), n)
    pixels = torch.from_numpy(np.stack(images).reshape(len(images), -1).astype(np.float32) / 255)  # [N, 784]
    return probe_suite(pixels, torch.tensor(labels), num_classes=10)


def table(zeroshot: dict, probes: list[dict], pixels: list[dict]) -> str:
    pixel_by_shots = {row["shots"]: row for row in pixels}
    lines = ["| method | images scored | top-1 | mean per-class recall |", "|---|---|---|---|",
             f"| zero-shot (10 classes, 8 prompts each) | {zeroshot['n']} | {zeroshot['top1']:.3f} | "
             f"{zeroshot['mean_per_class_recall']:.3f} |"]
    for row in probes:
        shots = "all" if row["shots"] == "full" else f"{row['shots']}-shot"
        pixel = pixel_by_shots[row["shots"]]
        lines.append(f"| linear probe on the image embeddings, {shots} | {row['n']} | {row['top1']:.3f} | "
                     f"{row['mean_per_class_recall']:.3f} |")
        lines.append(f"| linear probe on raw pixels, {shots} | {pixel['n']} | {pixel['top1']:.3f} | "
                     f"{pixel['mean_per_class_recall']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.path=value on the recipe")
    parser.add_argument("--work", default=str(HERE / ".work" / RECIPE), help="run directory (replaced)")
    parser.add_argument("--results", default=str(HERE / "results"))
    args = parser.parse_args()
    began = provenance.start()
    cfg = apply_overrides(get_recipe(RECIPE), args.overrides)
    run_dir = Path(args.work)
    if (run_dir / "checkpoints").exists():
        raise SystemExit(f"{run_dir} holds an earlier run; remove it to train afresh.")
    start = time.perf_counter()
    state = run_training(cfg, run_dir, progress=False)
    train_seconds = time.perf_counter() - start
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])

    model = load(run_dir)
    results = run_tasks(model, ["zeroshot", "linear-probe"], TEST).results
    zeroshot = next(r for r in results if r["task"] == "zeroshot")
    probes = [r for r in results if r["task"] == "linear-probe"]
    pixels = pixel_probe(cfg.eval.zeroshot_n)

    summary = {"zeroshot_top1": zeroshot["top1"], "linear_probe_top1": probes[0]["top1"],
               "pixel_probe_top1": pixels[0]["top1"], "train_seconds": round(train_seconds, 1), "steps": state.step}
    print(table(zeroshot, probes, pixels))
    print(json.dumps(summary))
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stamp = provenance.stamp(began, [cfg.train.seed])
    (out / "fashion_mnist.json").write_text(json.dumps({
        "stamp": stamp, "recipe": RECIPE, "overrides": args.overrides, "summary": summary,
        "final_train_metrics": {k: last[k] for k in ("loss", "pairs_per_s", "data_wait_fraction") if k in last},
        "zeroshot": zeroshot, "linear_probe": probes, "pixel_probe": pixels,
        "config": to_dict(cfg)}, indent=1) + "\n")
    (out / "fashion_mnist.md").write_text(
        f"# Fashion-MNIST: zero-shot vs linear probe (`{RECIPE}`)\n\n"
        f"Trained {state.step} steps of batch {cfg.data.batch_size} ({state.samples_seen} pairs, "
        f"{state.samples_seen / 60000:.2f} epochs of the 60k training split) in {train_seconds / 60:.1f} min on "
        f"{os.cpu_count()} CPU cores (load average {stamp['load_end']}); final training loss "
        f"{last['loss']:.3f}. Scored on `{TEST}`; the probes fit on 60% of those images, pick the weight decay on "
        f"20% and score the remaining {probes[0]['n']} (the pixel probe uses the same split). Chance is 0.100.\n\n"
        + table(zeroshot, probes, pixels) + "\n\n"
        "Reproduce: `nice -n 10 python benchmarks/fashion_mnist.py` (or `vlalign train --recipe fashion-mnist-clip`, "
        "then `vlalign eval --checkpoint runs/fashion-mnist-clip --task zeroshot --task linear-probe "
        "--data fashion-mnist:test`).\n\n" + provenance.markdown(stamp) + "\n")


if __name__ == "__main__":
    main()
