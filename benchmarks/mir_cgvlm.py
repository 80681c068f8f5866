"""MIR (Modality Integration Rate) of every CG-VLM run of a ``benchmarks/cgvlm.py`` work directory:
stage 1 (generative only vs contrastive + generative) and stage 2 at each data fraction.

    python benchmarks/mir_cgvlm.py --work benchmarks/.work/cgvlm

Writes benchmarks/results/mir_cgvlm.{md,json}. Lower MIR: the language model reads the image tokens
more like text tokens (Huang et al. 2024, the MIR paper, reports it falling as alignment improves).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlalign import provenance
from vlalign.api import load
from vlalign.eval import run_tasks

RESULTS = Path(__file__).parent / "results"
EVAL_SPEC = "shapes-qa:n=100,seed=1"  # the held-out scenes of benchmarks/cgvlm.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="benchmarks/.work/cgvlm", help="a benchmarks/cgvlm.py work directory")
    args = parser.parse_args()
    began = provenance.start()
    rows = []
    for run in sorted(Path(args.work).glob("stage*")):
        result = run_tasks(load(run), ["mir-vlm"], EVAL_SPEC).results[0]
        rows.append({"run": run.name, "mir": result["mir"], "per_layer": result["per_layer"], "n": result["n"]})
        print(f"{run.name}: MIR {result['mir']:.3f}", flush=True)
    lines = ["# MIR of the CG-VLM runs", "", f"Work directory `{args.work}`; held-out scenes `{EVAL_SPEC}`.", "",
             "| run | MIR (log10 of summed per-layer Fréchet distances) | per layer |", "|---|---|---|"]
    lines += [f"| {r['run']} | {r['mir']:.3f} | {', '.join(f'{d:.2f}' for d in r['per_layer'])} |" for r in rows]
    stamp = provenance.stamp(began, seeds=[])  # evaluates trained runs: their seeds are in the run names
    lines += ["", provenance.markdown(stamp)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mir_cgvlm.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "mir_cgvlm.json").write_text(json.dumps({"stamp": stamp, "work": args.work, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
