"""Catalogue issue 14 on the shapes world: Florence-VL depth-breadth fusion, VL-GPT interleaved generation,
Team RAS probability fusion, VILA-M3 expert context, SurgLaVi dual-modality filtering and hierarchical
captions, SAIL-VL's quality curriculum. Each section trains small models, measures the component against
its baseline and stores its rows in benchmarks/results/catalogue_rest.json (the other sections' rows are
kept); catalogue_rest.md is rewritten from the whole file, each paper's claim beside the small-scale result.

    nice -n 15 python benchmarks/catalogue_rest.py --sections florence ras surglavi sail vilam3 vlgpt
    nice -n 15 python benchmarks/catalogue_rest.py --sections ras --quick     # a smoke test of one section

Runs live under --work (benchmarks/.work/catalogue_rest) and are reused by later sections (the shared CLIP
tower, the text-only LM). One training process at a time, one torch thread: timings are indicative only,
taken on a shared 2-core machine (the load average is recorded next to them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import sys

import torch

sys.path.insert(0, str(Path(__file__).parent))  # catalogue_objectives (the shared CLIP settings)

from vlalign.api import load
from vlalign.config import RunConfig, apply_overrides
from vlalign.data.specs import build_source
from vlalign.eval import run_tasks
from vlalign.recipes import SHAPES_HOLDOUT, get_recipe
from vlalign.train import run_training

RESULTS = Path(__file__).parent / "results" / "catalogue_rest"
QUICK = False  # --quick: a few steps per run, numbers meaningless
COMMON = ["train.threads=1", "train.log_every=50"]
QA_EVAL = "shapes-qa:n=100,seed=1"  # held-out scenes of the generative sections (as benchmarks/cgvlm.py)
QA_TRAIN = "shapes-qa:n=400,seed=2"


def steps(n: int) -> int:
    return 3 if QUICK else n


def train(recipe: str, out: Path, overrides: list[str], reuse: bool = False) -> tuple[RunConfig, float]:
    """Train ``recipe`` with ``overrides`` into ``out`` (afresh, unless ``reuse`` and it finished before)."""
    cfg = apply_overrides(get_recipe(recipe), [*COMMON, *overrides])
    if reuse and (out / "finished").exists():
        return cfg, 0.0
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    run_training(cfg, out, progress=False)
    (out / "finished").touch()
    return cfg, time.perf_counter() - start


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def shared_runs(work: Path) -> dict[str, Path]:
    """The CLIP vision tower and the text-only LM of the CG-VLM pipeline, trained once per work folder."""
    runs = {"vision": work / "vision", "lm": work / "lm"}
    train("cgvlm-vision", runs["vision"], [f"train.steps={steps(400)}", "train.checkpoint_every=400"], reuse=True)
    train("lm-pretrain", runs["lm"], [f"train.steps={steps(400)}", f"data.eval={QA_EVAL}", "eval.tasks=[]",
                                      "train.checkpoint_every=400"], reuse=True)
    return runs


# ---------------------------------------------------------------------------------------------
# 1. Florence-VL: depth-breadth fusion vs the last layer, in the CG-VLM pipeline

FLORENCE_ARMS = {
    "last layer (LLaVA)": [],
    "depth: blocks 1+2": ["model.vlm.feature_depths=[-2,-1]"],
    "depth + breadth: blocks 1+2 x {image, h-flip}": ["model.vlm.feature_depths=[-2,-1]",
                                                       "model.vlm.feature_views=[identity,hflip]"],
}


def florence(work: Path, seeds: list[int]) -> dict:
    runs = shared_runs(work)
    generative = [f"data.eval={QA_EVAL}", "eval.tasks=[]"]
    rows = {}
    for arm, overrides in FLORENCE_ARMS.items():
        accuracy = []
        for seed in seeds:
            tag = f"florence-{len(overrides)}-seed{seed}"
            stage1, stage2 = work / f"{tag}-stage1", work / f"{tag}-stage2"
            train("cgvlm-stage1-gen", stage1, [*generative, *overrides, f"train.seed={seed}",
                                               f"train.steps={steps(300)}",
                                               f"model.init_from=[{runs['lm']},{runs['vision']}]"])
            train("cgvlm-stage2", stage2, [*generative, *overrides, f"train.seed={seed}", f"train.steps={steps(300)}",
                                           f"data.train={QA_TRAIN}", f"model.init_from=[{stage1}]"])
            result = {r["labels"]: r["accuracy"] for r in run_tasks(load(stage2), ["vqa"], QA_EVAL).results}
            accuracy.append(result)
            print(f"florence {arm} seed {seed}: vqa {result['all']:.3f}", flush=True)
        rows[arm] = {kind: [a[kind] for a in accuracy] for kind in accuracy[0]}
    return {"seeds": seeds, "arms": rows}


def florence_md(data: dict) -> list[str]:
    kinds = list(next(iter(data["arms"].values())))
    lines = ["## 1. Florence-VL: depth-breadth fusion (CG-VLM pipeline, held-out VQA exact match)", "",
             "Claim (Chen et al. 2024): concatenating features of several depths and several prompts (breadths) "
             "along channels, then one MLP projector, beats a single-layer connector across 25 benchmarks "
             "(no single number in the abstract).", "",
             "Small scale: vit-micro (2 blocks) CLIP tower, lm-micro, stage 1 captioning (connector only) then "
             f"stage 2 instruction tuning on `{QA_TRAIN}`; seeds {data['seeds']} (mean ± std).", "",
             "| connector reads | " + " | ".join(kinds) + " |", "| --- | " + " | ".join("---" for _ in kinds) + " |"]
    for arm, by_kind in data["arms"].items():
        lines.append(f"| {arm} | " + " | ".join(mean_std(by_kind[k]) for k in kinds) + " |")
    return lines


# ---------------------------------------------------------------------------------------------
# 3. Team RAS: prompt-group heads, multi-head probability fusion, pairwise compound classes

RAS_GROUPS = ("a {obj} {where}", "a picture of a {obj} {where}", "there is a {obj} {where}")


def clip_run(work: Path) -> Path:
    """A CLIP run on shapes with the compositional holdout (catalogue_objectives.BASE, 300 steps)."""
    from catalogue_objectives import BASE

    run = work / "clip-holdout"
    train("shapes-clip", run, [*BASE, f"train.steps={steps(300)}", "train.checkpoint_every=300",
                               "eval.tasks=[]"], reuse=True)
    return run


def shapes_prompts(template: str, colours: list[str], shapes: list[str]) -> list[str]:
    """One class's prompts in one group: ``template`` over every size and position of those colours/shapes."""
    from vlalign.data.shapes import POSITION_PHRASES, SIZES

    return [template.format(obj=f"{z} {c} {s}", where=w) for z in SIZES for c in colours for s in shapes
            for w in POSITION_PHRASES]


def ras_heads(model, images: list, samples: list) -> dict:
    """Per prompt group: [N, K] probabilities of colour, shape and the compound classes; and the labels."""
    from vlalign.data.shapes import COLOURS, SHAPES
    from vlalign.eval.probability_fusion import zero_shot_probabilities

    colours, shapes_ = list(COLOURS), list(SHAPES)
    embeds = model.encode_image(images)
    scale = model.model.logit_scale.exp().item()
    heads = {"colour": [], "shape": [], "compound": []}
    for template in RAS_GROUPS:
        sets = {"colour": [shapes_prompts(template, [c], shapes_) for c in colours],
                "shape": [shapes_prompts(template, colours, [s]) for s in shapes_],
                "compound": [shapes_prompts(template, [c], [s]) for c in colours for s in shapes_]}
        for name, prompts in sets.items():
            heads[name].append(zero_shot_probabilities(model.encode_text, embeds, prompts, "max", scale))
    labels = {"colour": torch.tensor([colours.index(x.meta["colour"]) for x in samples]),
              "shape": torch.tensor([shapes_.index(x.meta["shape"]) for x in samples]),
              "compound": torch.tensor([x.label for x in samples])}  # colour-major, as pairwise_compound
    return {name: torch.stack(h) for name, h in heads.items()}, labels  # [H, N, K] each


def ras(work: Path, seeds: list[int]) -> dict:
    from vlalign.eval.probability_fusion import MultiHeadProbabilityFusion, pairwise_compound
    from vlalign.eval.tasks import load_arrays

    model = load(clip_run(work))
    size = model.config.data.image_size
    world = f"shapes:seed={{seed}},n={{n}},objects=1,size={size},holdout={SHAPES_HOLDOUT}"
    dev_images, _, _, dev_samples = load_arrays(build_source(world.format(seed=3, n=400) + ",holdout_mode=exclude"))
    dev, dev_labels = ras_heads(model, dev_images, dev_samples)
    fusions = {}
    for name in dev:
        fusions[name] = MultiHeadProbabilityFusion(len(RAS_GROUPS), dev[name].shape[2])
        fusions[name].fit(dev[name], dev_labels[name], steps=steps(200))
    out = {}
    for split, mode in (("seen combos", "exclude"), ("held-out combos", "only")):
        n = 1000 if mode == "exclude" else 400
        images, _, _, samples = load_arrays(build_source(world.format(seed=2, n=n) + f",holdout_mode={mode}"))
        heads, labels = ras_heads(model, images, samples)
        with torch.no_grad():
            fused = {name: fusions[name](heads[name]) for name in heads}
            methods = {
                "direct, one prompt group": heads["compound"][0],
                "direct, mean of 3 groups": heads["compound"].mean(0),
                "direct, multi-head fusion": fused["compound"],
                "pairwise colour x shape, one group": pairwise_compound(heads["colour"][0], heads["shape"][0]),
                "pairwise colour x shape, multi-head fusion": pairwise_compound(fused["colour"], fused["shape"]),
            }
        out[split] = {m: (p.argmax(1) == labels["compound"]).float().mean().item() for m, p in methods.items()}
        out[split] |= {f"{a} alone (fused)": (fused[a].argmax(1) == labels[a]).float().mean().item()
                       for a in ("colour", "shape")}
        print(split, out[split], flush=True)
    return out


def ras_md(data: dict) -> list[str]:
    splits = list(data)
    lines = ["## 3. Team RAS: multi-head probability fusion and pairwise compound classes (zero-shot top-1)", "",
             "Claim (Ryumina et al. 2025, 9th ABAW): zero-shot label matching from several heads, combined by a "
             "multi-head probability fusion, with compound classes built pairwise from basic ones, reaches F1 "
             "46.95 (AffWild2), 49.02 (AFEW), 34.85 (C-EXPR-DB) without training on compound data.", "",
             "Small scale: a CLIP run (vit-micro, 300 steps, 4 colour-shape combos held out of training), single-"
             f"object scenes; heads = prompt groups {', '.join(repr(g) for g in RAS_GROUPS)}; the fusion's "
             "per-(group, class) weights fitted on 400 dev images of seen combos. Compound = colour+shape "
             "(56 classes).", "",
             "| method | " + " | ".join(splits) + " |", "| --- | " + " | ".join("---" for _ in splits) + " |"]
    for method in data[splits[0]]:
        lines.append(f"| {method} | " + " | ".join(f"{data[s][method]:.3f}" for s in splits) + " |")
    return lines


# ---------------------------------------------------------------------------------------------

SECTIONS = {"florence": (florence, florence_md), "ras": (ras, ras_md)}


def write_markdown(results: dict) -> None:
    lines = ["# Catalogue issue 14: the rest of the second seed list at small scale", "",
             f"torch {torch.__version__}, {platform.machine()}, one torch thread, runs one at a time on a shared "
             "2-core machine (timings indicative only). Each section: the paper's claim, then what small scale "
             "shows. `--quick` rows are smoke tests.", ""]
    for name, (_, to_md) in SECTIONS.items():
        if name in results:
            meta = results[name]["meta"]
            lines += to_md(results[name]["data"])
            lines += ["", f"_({meta['minutes']:.1f} min, load average {meta['load']:.1f}"
                      f"{', --quick: numbers meaningless' if meta['quick'] else ''})_", ""]
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    global QUICK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.work/catalogue_rest"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    QUICK = args.quick
    torch.set_num_threads(1)
    path = RESULTS.with_suffix(".json")
    for name in args.sections:
        start = time.perf_counter()
        data = SECTIONS[name][0](args.work, args.seeds)
        results = json.loads(path.read_text()) if path.exists() else {}  # read late: other sections may have run
        results[name] = {"data": data, "meta": {"minutes": (time.perf_counter() - start) / 60,
                                                "load": os.getloadavg()[0], "quick": QUICK}}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        write_markdown(results)
        print("\n".join(SECTIONS[name][1](data)), flush=True)


if __name__ == "__main__":
    main()
