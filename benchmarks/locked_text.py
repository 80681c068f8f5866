"""What a locked pretrained text tower buys: LiT (all-MiniLM-L6-v2, frozen; only the image tower and
the projections train) against a text tower trained from scratch, at equal steps, on the shapes
world and on Fashion-MNIST. Writes benchmarks/results/locked_text.{md,json}.

    python benchmarks/locked_text.py --steps 300 --seeds 0

Reference point (LiT, Zhai et al. 2022, Table 1): a locked pretrained image tower beats training
both towers from scratch by a wide margin at equal data. Here the locked side is the text tower (the
LanguageBind setting), and the pretrained model knows English but has never seen these images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recipe_runs import run, table

from vlalign import provenance
from vlalign.recipes import RECIPES

RESULTS = Path(__file__).parent / "results"
LOCKED = ["model.text.tower=hf:all-MiniLM-L6-v2", "model.text.pool=mean", "model.text.locked=true"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipes", nargs="+", default=[r for r in ("shapes-clip", "fashion-mnist-clip") if r in RECIPES])
    parser.add_argument("--work", default="benchmarks/.work/locked_text")
    args = parser.parse_args()
    began = provenance.start()
    work = Path(args.work)
    rows = []
    for seed in args.seeds:
        for recipe in args.recipes:
            rows.append(run(recipe, args.steps, seed, work, [], f"{recipe} (text from scratch)"))
            rows.append(run(recipe, args.steps, seed, work, LOCKED, f"{recipe} (locked MiniLM text)"))
            print(table(rows), flush=True)
    stamp = provenance.stamp(began, args.seeds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "locked_text.json").write_text(json.dumps({"stamp": stamp, "rows": rows}, indent=1))
    (RESULTS / "locked_text.md").write_text("# Locked pretrained text tower (LiT) vs text from scratch\n\n"
                                             + table(rows) + "\n\n" + provenance.markdown(stamp) + "\n")


if __name__ == "__main__":
    main()
