"""int8 against fp32 inference on a trained run: the eval suite's scores, the embeddings' agreement and
the encoding speed, side by side in one process.

    vlalign train --out runs/shapes-clip                     # the default recipe, ~3.5 minutes
    python benchmarks/int8_inference.py runs/shapes-clip     # writes benchmarks/results/int8_inference.{json,md}

int8 (``Aligner.quantize_int8``, ``vlalign.models.int8``) runs the towers' linear layers as int8 x int8
products; the rest of the arithmetic stays fp32. Speed: alternating rounds, timed by the open_clip
comparison's ``alternate`` (benchmarks/vs_open_clip.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from vs_open_clip import alternate, summarize

import vlalign
from vlalign import provenance
from vlalign.data.specs import build_source
from vlalign.eval.tasks import load_arrays, run_tasks

HERE = Path(__file__).resolve().parent
TASKS = ["zeroshot", "compositional", "retrieval"]


def scores(model) -> dict[str, float]:
    """Every metric of the shapes eval tasks, flattened to "task/metric"."""
    out = {}
    for result in run_tasks(model, TASKS).results:
        for key, value in result.items():
            if isinstance(value, float):
                out["/".join(filter(None, (result["task"], result.get("labels"), key)))] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a trained dual-encoder run directory")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    began = provenance.start()
    torch.set_num_threads(args.threads)
    fp32, int8 = vlalign.load(args.run), vlalign.load(args.run, int8=True)
    images, captions, _, _ = load_arrays(build_source("shapes:n=1000,seed=2"))
    with torch.inference_mode():
        cosine = {"image": F.cosine_similarity(int8.encode_image(images), fp32.encode_image(images)),
                  "text": F.cosine_similarity(int8.encode_text(captions), fp32.encode_text(captions))}
    speed = {kind: summarize(alternate({"fp32": lambda m=fp32, k=kind: run(m, k, images, captions),
                                        "int8": lambda m=int8, k=kind: run(m, k, images, captions)}, args.rounds, 1),
                             "fp32")
             for kind in ("image", "text")}
    result = {"stamp": provenance.stamp(began, seeds=[]), "run": str(args.run), "step": fp32.step,
              "threads": args.threads, "scores": {"fp32": scores(fp32), "int8": scores(int8)},
              "cosine": {k: {"min": v.min().item(), "mean": v.mean().item()} for k, v in cosine.items()},
              "items_per_s": speed}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_inference.json").write_text(json.dumps(result, indent=1))
    (args.out / "int8_inference.md").write_text(markdown(result))
    print(markdown(result))


def run(model, kind: str, images, captions) -> int:
    if kind == "image":
        model.encode_image(images)
        return len(images)
    model.encode_text(captions)
    return len(captions)


def markdown(r: dict) -> str:
    lines = ["# int8 against fp32 inference", "",
             (f"Run `{r['run']}` (step {r['step']}), {r['threads']} threads, torch {r['stamp']['torch']}; written by "
              "`benchmarks/int8_inference.py`, every number in `int8_inference.json`. 1,000 shapes scenes "
              "(`shapes:n=1000,seed=2`) for the embeddings and the speed. The default recipe's towers are small "
              "(10 image tokens, width 128), where int8 gains least; for config \"A\"'s towers see the int8 rows "
              "of `vs_open_clip.md`."), "",
             "| | fp32 | int8 | int8 / fp32 |", "|---|---|---|---|"]
    for kind in ("image", "text"):
        s = r["items_per_s"][kind]
        lines.append(f"| encode_{kind}, items/s (median of {len(s['rounds']['fp32'])} alternating rounds; ratio: "
                     f"median of per-round ratios) | {s['median_rate']['fp32']:.0f} | {s['median_rate']['int8']:.0f} | "
                     f"{s['median_ratio']['int8']:.2f}x |")
    for kind, c in r["cosine"].items():
        lines.append(f"| cosine of the {kind} embeddings to fp32's, min (mean) | 1 | {c['min']:.4f} ({c['mean']:.4f}) | - |")
    for key, value in r["scores"]["fp32"].items():
        other = r["scores"]["int8"][key]
        lines.append(f"| {key} | {value:.3f} | {other:.3f} | {other - value:+.3f} |")
    return "\n".join(lines + ["", provenance.markdown(r["stamp"])]) + "\n"


if __name__ == "__main__":
    main()
