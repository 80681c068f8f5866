"""Catalogue issue 13 (adaptation): adapters, dynamic-rank LoRA, prompt learning with active selection and model
merging, measured on a shift from the shapes world to Fashion-MNIST. Writes
benchmarks/results/catalogue_adaptation.{md,json}.

    nice -n 15 python benchmarks/catalogue_adaptation.py            # ~25 min on a loaded 2-core machine

1. ``base``: a CLIP trained briefly on shapes captions (vit-micro/8 at 32 px + text-micro, both 64 wide).
2. Every adaptation arm starts from it (``model.init_from``) and trains on Fashion-MNIST captions ("a photo of the
   sneaker"), the same steps and data; accuracy is zero-shot top-1 on the Fashion-MNIST test split (the 10 classes'
   prompt ensembles), and shapes zero-shot (colour+shape) measures what the base kept.
3. Merging: the base and the full fine-tune interpolated; the fine-tune's change (FT - base) added to a base that
   kept training on shapes (a "continually pre-trained" base).
4. PCB: prompt context learned on a frozen model from a few labels of a long-tailed Fashion-MNIST pool, the labels
   chosen at random, by entropy, or by PCB's class balancing seeded from zero-shot pseudo-labels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from vlalign import provenance
from vlalign.adapt.active_selection import STRATEGIES, select
from vlalign.adapt.merging import merge_runs
from vlalign.adapt.prompt_learning import prompt_logits, tokenize_class_names, train_prompt_context
from vlalign.api import Aligner, load
from vlalign.config import RunConfig, apply_overrides, dump_yaml, from_dict
from vlalign.data.fashion_mnist import CLASSES
from vlalign.data.specs import build_source, register_source
from vlalign.eval.tasks import load_arrays, run_tasks
from vlalign.models.adapters import merge_adapters
from vlalign.models.modality_adapter import MixtureOfModalityAdapter
from vlalign.models.prompt_context import PromptContext
from vlalign.models.rank_lora import RankSelectiveLoRA
from vlalign.recipes import get_recipe
from vlalign.train import run_training

RESULTS = Path(__file__).parent / "results"
SHAPES = "shapes:n=12000,seed=0"
FASHION = "fashion-mnist:train"
SHAPES_EVAL = "shapes:n={n},seed=2,objects=1,size=32"
BASE = ["data.image_size=32", "model.vision.size=vit-micro", "model.vision.patch_size=8", "model.text.size=text-micro",
        "model.text.vocab_size=512", "model.embed_dim=64", "data.batch_size=64", "data.context_length=32",
        "optim.warmup_steps=30", "train.threads=1", "train.log_every=25", "data.eval=fashion-mnist:test"]
TRAIN_SEED = get_recipe("shapes-clip").train.seed  # every training arm's: the recipe's own
ACTIVE_POOLS = 3  # active prompt learning: one long-tailed pool per seed 0, 1, ...
REUSE = False  # --reuse: keep finished runs of the work directory (set by main)
RANK_TARGETS = "model.adapter.targets=attn.qkv,attn.proj,mlp.fc1,mlp.fc2"
# The base never read Fashion-MNIST's words: their token embeddings are untrained, and with them frozen the text side
# cannot tell the classes apart (the bottleneck-frozen-text arm collapses to chance). Every other PET arm trains them.
NEW_WORDS = "model.adapter.train_token_embeddings=true"


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: tuple[str, ...]
    claim: str
    data: str = FASHION


ARMS = (
    Arm("full-ft", (), "Reference: every weight trains (the towers, heads and temperature)."),
    Arm("bottleneck-frozen-text", ("model.adapter.kind=bottleneck", "model.adapter.rank=8"),
        "VL-Adapter's setting taken literally: adapters only, every pretrained weight frozen, the token embeddings "
        "included."),
    Arm("bottleneck", (NEW_WORDS, "model.adapter.kind=bottleneck", "model.adapter.rank=8"),
        "VL-Adapter (Sung et al. 2022): bottleneck adapters with 4.18% of the parameters match full fine-tuning on "
        "image-text tasks (3.39% on video-text)."),
    Arm("bottleneck-shared", (NEW_WORDS, "model.adapter.kind=bottleneck", "model.adapter.rank=8",
         "model.adapter.share=true"),
        "VL-Adapter: one set of adapter weights shared (here by the two towers) loses little against separate ones."),
    Arm("bottleneck-gate-module", (NEW_WORDS, "model.adapter.kind=bottleneck", "model.adapter.rank=8",
         "model.adapter.gate=module"),
        "VL-PET (Hu et al. 2023): granularity-controlled modulation of the PET module's output; VL-PET-large beats "
        "VL-Adapter by 2.92% (BART-base) / 3.41% (T5-base) and LoRA by 3.37% / 7.03% on image-text tasks."),
    Arm("bottleneck-gate-head", (NEW_WORDS, "model.adapter.kind=bottleneck", "model.adapter.rank=8",
         "model.adapter.gate=head"),
        "VL-PET, head-wise granularity (\"middle\")."),
    Arm("bottleneck-gate-element", (NEW_WORDS, "model.adapter.kind=bottleneck", "model.adapter.rank=8",
                                    "model.adapter.gate=element"),
        "VL-PET, element-wise granularity (\"large\")."),
    Arm("lora", (NEW_WORDS, "model.adapter.kind=lora", "model.adapter.rank=8"),
        "LoRA (Hu et al. 2021) on attn.qkv and attn.proj through peft: the PET baseline VL-PET improves on."),
    Arm("lora-gate-element", (NEW_WORDS, "model.adapter.kind=lora", "model.adapter.rank=8",
         "model.adapter.gate=element"),
        "VL-PET's element-wise gate on LoRA's output (folded into the weights at merge)."),
    Arm("mma-shared", (NEW_WORDS, "model.adapter.kind=mma", "model.adapter.rank=8", "model.adapter.share=true"),
        "LaVIN's MMA (Luo et al. 2023): adapters with a router between a text-only and a multimodal path; 3.8M "
        "trainable parameters, 1.4 training hours for LLaMA-7B on ScienceQA."),
    Arm("rank-lora-l1", (NEW_WORDS, "model.adapter.kind=rank-lora", "model.adapter.rank=8", RANK_TARGETS,
                         "model.adapter.sparsity=30"),
        "Dynamic Rank-Selective LoRA (Lu et al. 2025): per-rank importance with a sparsity penalty lets each module's "
        "rank adapt; merged at inference, no extra inference cost (no numbers in the abstract). λ=30: over 100 steps "
        "the proximal steps can shrink an importance by λ·Σlr ≈ 1.5 (it starts at 1)."),
    Arm("rank-lora-l1-weak", (NEW_WORDS, "model.adapter.kind=rank-lora", "model.adapter.rank=8", RANK_TARGETS,
                              "model.adapter.sparsity=20"),
        "Dynamic Rank-Selective LoRA, a weaker penalty: λ·Σlr ≈ 1.0, so only ranks the data does not push up "
        "die."),
    Arm("rank-lora-dense", (NEW_WORDS, "model.adapter.kind=rank-lora", "model.adapter.rank=8", RANK_TARGETS),
        "Control: the same LoRA on the same targets with the importance learned but no sparsity penalty."),
    Arm("multitask-shared", (NEW_WORDS, "model.adapter.kind=bottleneck", "model.adapter.rank=8",
         "model.adapter.share=true"),
        "VL-Adapter's multi-task setting: one shared adapter trained on both tasks (here shapes + Fashion-MNIST "
        "captions) serves both.", data="union:shapes:n=30000,seed=3;fashion-mnist-rgb:train"),
)


# The rest on request (--arms): the machine these ran on was shared with several other jobs.
DEFAULT_ARMS = ("full-ft", "bottleneck-frozen-text", "bottleneck", "lora", "rank-lora-l1", "mma-shared",
                "bottleneck-shared", "bottleneck-gate-head", "rank-lora-dense")


class GreyAsRGB:
    """A grey source whose images repeat into 3 channels: a union needs its sources to share channels."""

    def __init__(self, source):
        self.source = source
        self.name = source.name + " (rgb)"
        self.channel_names = ("red", "green", "blue")

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        sample = self.source[i]
        return dataclasses.replace(sample, image=np.repeat(sample.image, 3, axis=0), channel_names=self.channel_names)

    def __getattr__(self, name: str):
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)


register_source("fashion-mnist-rgb", "fashion-mnist-rgb:train|test  (benchmark only)")(
    lambda split: GreyAsRGB(build_source(f"fashion-mnist:{split}")))


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def train(out: Path, overrides: list[str], steps: int) -> float:
    """Train a fresh run into ``out``; returns its seconds. With REUSE, a finished run of the same config stays."""
    cfg = apply_overrides(get_recipe("shapes-clip"), [*BASE, *overrides, f"train.steps={steps}",
                                                       f"train.checkpoint_every={steps}"])
    record = out / "benchmark_seconds.json"
    if REUSE and record.is_file():  # compared as configs, so that a config field added since reads as its default
        saved = json.loads(record.read_text())
        if from_dict(RunConfig, yaml.safe_load(saved["config"])) == cfg:
            return saved["seconds"]
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, never a resume
    start = time.perf_counter()
    run_training(cfg, out, progress=False)
    seconds = time.perf_counter() - start
    record.write_text(json.dumps({"seconds": seconds, "config": dump_yaml(cfg)}))
    return seconds


def accuracies(model: Aligner, eval_n: int) -> dict[str, float]:
    """Zero-shot top-1 on Fashion-MNIST (the target) and on single-object shapes (colour+shape: the source)."""
    model.config.eval.zeroshot_n = eval_n
    fashion = run_tasks(model, ["zeroshot"], "fashion-mnist:test").results
    shapes = run_tasks(model, ["zeroshot"], SHAPES_EVAL.format(n=eval_n)).results
    return {"fashion": next(r["top1"] for r in fashion if r["labels"] == "class"),
            "shapes": next(r["top1"] for r in shapes if r["labels"] == "shape+colour")}


def trainable(run: Path) -> dict[str, float]:
    counts = json.loads((run / "parameters.json").read_text())
    return {"trainable": counts["trainable"], "total": counts["total"], "share": counts["trainable"] / counts["total"]}


@torch.inference_mode()
def routing(model: Aligner, images: list[np.ndarray]) -> dict[str, float]:
    """MMA: mean weight of path 1 ("image path") over the tokens of each tower, on test images and class prompts."""
    weights: list[torch.Tensor] = []
    hooks = [m.adapter_router.register_forward_hook(
        lambda mod, inp, out, m=m: weights.append(torch.softmax(out / m.temperature, -1)))  # = m.route(inp[0])
        for m in model.model.modules() if isinstance(m, MixtureOfModalityAdapter)]
    out = {}
    for tower, run in (("image", lambda: model.encode_image(images)),
                       ("text", lambda: model.encode_text([f"a photo of the {c}" for c in CLASSES]))):
        weights.clear()
        run()
        out[f"path1_{tower}"] = float(torch.cat([w.reshape(-1, 2) for w in weights])[:, 1].mean())
    for h in hooks:
        h.remove()
    return out


def rank_summary(model: Aligner) -> dict:
    layers = {n: m for n, m in model.model.named_modules() if isinstance(m, RankSelectiveLoRA)}
    active = {n: m.active_ranks() for n, m in layers.items()}
    by_kind: dict[str, list[int]] = {}
    for n, r in active.items():
        by_kind.setdefault(n.split(".")[0] + ":" + ".".join(n.split(".")[-2:]), []).append(r)
    return {"active_ranks": sum(active.values()), "ranks": sum(m.lora_importance.numel() for m in layers.values()),
            "active_by_module": {k: v for k, v in sorted(by_kind.items())}}


def run_arm(arm: Arm, work: Path, steps: int, eval_n: int) -> dict:
    out = work / arm.name
    seconds = train(out, [f"data.train={arm.data}", f"model.init_from=[{work / 'base'}]", *arm.overrides], steps)
    model = load(out)
    row = {"arm": arm.name, "train_seconds": round(seconds, 1), "loadavg": loadavg(), **trainable(out),
           **accuracies(model, eval_n)}
    if model.config.model.adapter.kind == "mma":
        images, _, _, _ = load_arrays(build_source("fashion-mnist:test"), 200)
        row |= routing(model, images)
    if model.config.model.adapter.kind == "rank-lora":
        row |= rank_summary(model)
        merge_adapters(model.model)  # the deployed form: plain weights, same numbers
        merged = accuracies(model, eval_n)
        row |= {"fashion_merged": merged["fashion"], "shapes_merged": merged["shapes"]}
    return row


def merging_rows(work: Path, steps: int, eval_n: int) -> list[dict]:
    """Interpolations of base and full-ft, and the residual (full-ft - base) on a base that kept training."""
    rows = []
    for alpha in (0.25, 0.5, 0.75):
        out = work / f"merge-{alpha}"
        shutil.rmtree(out, ignore_errors=True)
        merge_runs(work / "base", work / "full-ft", out, alpha)
        rows.append({"arm": f"interpolate α={alpha}", **accuracies(load(out), eval_n)})
    seconds = train(work / "base-continued", [f"data.train={SHAPES}", f"model.init_from=[{work / 'base'}]",
                                              "train.seed=1"], steps)
    rows.append({"arm": "continued base C", "train_seconds": round(seconds, 1),
                 **accuracies(load(work / "base-continued"), eval_n)})
    out = work / "residual"
    shutil.rmtree(out, ignore_errors=True)
    merge_runs(work / "base", work / "full-ft", out, onto=work / "base-continued")
    rows.append({"arm": "C + (full-ft - base)", **accuracies(load(out), eval_n)})
    return rows


def long_tailed(labels: np.ndarray, per_class: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a pool with per_class * ratio**k samples of class k (PCB's setting: imbalanced candidates)."""
    picks = [rng.choice(np.flatnonzero(labels == k), max(1, int(per_class * ratio**k)), replace=False)
             for k in range(len(CLASSES))]
    return np.concatenate(picks)


@torch.no_grad()
def _probs(model, context, ids, mask, embeds):
    return prompt_logits(model, context, ids, mask, embeds).softmax(1)


def active_prompt_learning(model: Aligner, rounds: int, budget: int, seeds: int, pool_n: int,
                           test_n: int, steps: int) -> dict:
    """Accuracy of CoOp prompts after each round of labelling, per strategy, mean over seeds."""
    src, test = build_source("fashion-mnist:train"), build_source("fashion-mnist:test")
    train_images, _, train_labels, _ = load_arrays(src, 12000)
    test_images, _, test_labels, _ = load_arrays(test, test_n)
    train_labels, test_labels = np.array(train_labels), torch.tensor(test_labels)
    with torch.no_grad():
        # clone: out of inference mode, so that the prompt's gradient can flow through products with them
        train_embeds, test_embeds = model.encode_image(train_images).clone(), model.encode_image(test_images).clone()
    net = model.model
    ids, mask = tokenize_class_names(model.tokenizer, CLASSES, model.config.data.context_length)
    start = PromptContext.from_text(net, model.tokenizer, "a photo of the")
    zero_shot = (_probs(net, start, ids, mask, test_embeds).argmax(1) == test_labels).float().mean().item()
    curves = {s: np.zeros((seeds, rounds)) for s in STRATEGIES}
    balance = {s: np.zeros(seeds) for s in STRATEGIES}
    for seed in range(seeds):
        pool = torch.from_numpy(long_tailed(train_labels, pool_n, 0.6, np.random.default_rng(seed)))
        for strategy in STRATEGIES:
            generator = torch.Generator().manual_seed(seed)
            context = PromptContext(start.context)
            labelled = torch.empty(0, dtype=torch.long)
            for r in range(rounds):
                candidates = pool[~torch.isin(pool, labelled)]
                probs = _probs(net, context, ids, mask, train_embeds)  # zero-shot in round 0: the start prompt
                counts = torch.bincount(torch.from_numpy(train_labels[labelled.numpy()]), minlength=len(CLASSES))
                labelled = torch.cat([labelled, select(strategy, candidates, probs, counts, budget, generator)])
                context = PromptContext(start.context)  # CoOp retrains from the initial prompt on all labels
                train_prompt_context(net, context, ids, mask, train_embeds[labelled],
                                     torch.from_numpy(train_labels[labelled.numpy()]), steps=steps)
                accuracy = (_probs(net, context, ids, mask, test_embeds).argmax(1) == test_labels).float().mean()
                curves[strategy][seed, r] = accuracy.item()
            classes = np.bincount(train_labels[labelled.numpy()], minlength=len(CLASSES))
            balance[strategy][seed] = (classes > 0).sum()
    return {"zero_shot": zero_shot, "budgets": [budget * (r + 1) for r in range(rounds)], "seeds": seeds,
            "mean": {s: curves[s].mean(0).round(4).tolist() for s in STRATEGIES},
            "std": {s: curves[s].std(0).round(4).tolist() for s in STRATEGIES},
            "classes_covered": {s: float(balance[s].mean()) for s in STRATEGIES},
            "pool_sizes": [max(1, int(pool_n * 0.6**k)) for k in range(len(CLASSES))]}


def write(result: dict) -> None:
    rows, base = result["rows"], result["base"]
    full = next((r for r in rows if r["arm"] == "full-ft"), None)
    arms = {a.name: a for a in ARMS}
    lines = [
        "# Catalogue adaptation (issue 13): adapters, dynamic-rank LoRA, merging, active prompt learning",
        "",
        (f"Command: `{result['command']}` ({result['wall_seconds'] / 60:.1f} min; torch {torch.__version__}, "
         f"{platform.machine()}, 1 thread per run, one seed per training arm, on a shared 2-core machine under load "
         "from other jobs: seconds are indicative only, each row carries os.getloadavg() at its end in the JSON)."),
        "",
        (f"Base: CLIP on shapes captions (`{SHAPES}`), {result['base_steps']} steps of 64 pairs, vit-micro/8 at 32 px "
         f"+ text-micro (2 blocks each, width 64), lr 1e-3 cosine. Every arm then trains {result['steps']} steps on "
         "Fashion-MNIST captions (grey images to 3 channels at 32 px, the base's tokenizer) from the base "
         "(`model.init_from`), at the same lr. `fashion` = zero-shot top-1 on "
         f"{result['eval_n']} Fashion-MNIST test images (10 classes, prompt ensembles), `shapes` = zero-shot "
         f"colour+shape top-1 on {result['eval_n']} single-object shapes scenes (what the base kept). Trainable "
         "share counts the projection heads and temperature too (they train in every arm), shared weights once."),
        "",
        *([f"**Status.** {result['status']}", ""] if result.get("status") else []),
        f"Base before adaptation: fashion {base['fashion']:.3f}, shapes {base['shapes']:.3f} "
        f"(train {base['train_seconds']:.0f} s).",
        "",
        "| arm | trainable | share | fashion | shapes | train s | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        notes = []
        if "active_ranks" in r:
            notes.append(f"active ranks {r['active_ranks']}/{r['ranks']}; merged: fashion {r['fashion_merged']:.3f}, "
                         f"shapes {r['shapes_merged']:.3f}")
        if "path1_image" in r:
            notes.append(f"router weight on path 1: image tokens {r['path1_image']:.3f}, text tokens "
                         f"{r['path1_text']:.3f}")
        lines.append(f"| {r['arm']} | {r['trainable']:,} | {100 * r['share']:.1f}% | {r['fashion']:.3f} | "
                     f"{r['shapes']:.3f} | {r['train_seconds']:.0f} | {'; '.join(notes)} |")
    lines += ["", "| arm | paper's claim | what small scale shows |", "|---|---|---|"]
    for r in rows:
        shown = "reference" if r is full or full is None else (
            f"fashion {r['fashion']:.3f} vs full fine-tuning {full['fashion']:.3f} "
            f"({r['fashion'] - full['fashion']:+.3f}) "
            f"with {100 * r['share']:.1f}% of the parameters trainable; shapes kept {r['shapes']:.3f} (full-ft "
            f"{full['shapes']:.3f})")
        lines.append(f"| {r['arm']} | {arms[r['arm']].claim} | {shown} |")
    if result.get("notes"):
        lines += ["", "## Notes", "", *result["notes"]]
    if result.get("merging"):
        lines += merging_section(result, base, full)
    if result.get("active"):
        lines += active_section(result)
    lines += ["", provenance.markdown(result["stamp"])]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "catalogue_adaptation.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "catalogue_adaptation.json").write_text(json.dumps(result, indent=1))


def merging_section(result: dict, base: dict, full: dict) -> list[str]:
    lines = ["", "## Merging and instruction residuals", "",
              ("Interpolation (1-α)·base + α·full-ft (`vlalign merge base full-ft --alpha α`), and the "
               "fine-tune's "
               "change added to a base that trained further on shapes (`--onto`). Claim (VL adaptation & safety "
               "study, no numbers): interpolating weights trades between the two models' abilities without "
               "training; an instruction residual transfers a tuning to a continually pre-trained base."), "",
              "| model | fashion | shapes |", "|---|---|---|",
              f"| base (α=0) | {base['fashion']:.3f} | {base['shapes']:.3f} |"]
    lines += [f"| {r['arm']} | {r['fashion']:.3f} | {r['shapes']:.3f} |" for r in result["merging"]]
    lines.append(f"| full-ft (α=1) | {full['fashion']:.3f} | {full['shapes']:.3f} |")
    return lines


def active_section(result: dict) -> list[str]:
    apl = result["active"]
    lines = ["", "## Active prompt learning (PCB)", "",
              (f"CoOp context ({result['context_vectors']} vectors, initialised from \"a photo of the\", so the "
               f"start is the zero-shot classifier) on the frozen `{result['active_model']}` model; the labels come "
               f"from a long-tailed pool of Fashion-MNIST training images (class k has {apl['pool_sizes'][0]}·0.6^k: "
               f"{apl['pool_sizes']}), {apl['budgets'][0]} per round, after which the context is retrained on all "
               f"labels. Test: {result['eval_n']} balanced test images; mean ± std over {apl['seeds']} pools. "
               "Round 1 selects with the zero-shot predictions (PCB's pseudo-labels); later rounds with the current "
               f"prompts'. Zero-shot start: {apl['zero_shot']:.3f}. Claim (Bang et al. 2024, 7 datasets, no numbers "
               "in the abstract): uncertainty-based active learning can do worse than random with a VLM because it "
               "selects imbalanced classes; PCB's balancing beats both."), "",
              "| labels | " + " | ".join(STRATEGIES) + " |", "|---|" + "---|" * len(STRATEGIES)]
    for i, b in enumerate(apl["budgets"]):
        lines.append(f"| {b} | " + " | ".join(f"{apl['mean'][s][i]:.3f} ± {apl['std'][s][i]:.3f}"
                                             for s in STRATEGIES) + " |")
    lines.append("| classes covered at the end | " + " | ".join(f"{apl['classes_covered'][s]:.1f} / 10"
                                                              for s in STRATEGIES) + " |")
    return lines


def earlier_notes() -> list[str]:
    """The hand-written notes (diagnoses) of the existing results file: a rerun keeps them."""
    path = RESULTS / "catalogue_adaptation.json"
    return json.loads(path.read_text()).get("notes", []) if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100, help="adaptation steps per arm")
    parser.add_argument("--eval-n", type=int, default=300)
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=[a.name for a in ARMS])
    parser.add_argument("--reuse", action="store_true", help="keep finished runs of --work (same config) instead of "
                        "retraining them")
    parser.add_argument("--active-model", default="merge-0.5", help="the work-dir run PCB learns prompts on")
    parser.add_argument("--work", default="benchmarks/.work/catalogue_adaptation")
    parser.add_argument("--keep-work", action="store_true", help="keep the trained runs in --work")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json, train nothing")
    args = parser.parse_args()
    if args.report_only:
        write(json.loads((RESULTS / "catalogue_adaptation.json").read_text()))
        return
    global REUSE
    REUSE = args.reuse
    began = provenance.start()
    work, start = Path(args.work), time.perf_counter()
    seconds = train(work / "base", [f"data.train={SHAPES}"], args.base_steps)
    base = {"train_seconds": round(seconds, 1), **accuracies(load(work / "base"), args.eval_n)}
    print("base", base, flush=True)
    result = {"command": " ".join(["python benchmarks/catalogue_adaptation.py", *sys.argv[1:]]),
              "base_steps": args.base_steps, "steps": args.steps, "eval_n": args.eval_n, "base_overrides": BASE,
              "base": base, "rows": [], "notes": earlier_notes()}

    def save() -> None:  # after every stage, so that a stopped run leaves its finished rows
        stamp = provenance.stamp(began, sorted({TRAIN_SEED, *range(ACTIVE_POOLS)}))
        write({"stamp": stamp} | result | {"wall_seconds": time.perf_counter() - start})

    arms = {a.name: a for a in ARMS}
    for name in args.arms:  # in the order given; merging and PCB right after full-ft, which they read
        result["rows"].append(run_arm(arms[name], work, args.steps, args.eval_n))
        print(result["rows"][-1], flush=True)
        save()
        if name != "full-ft":
            continue
        result["merging"] = merging_rows(work, args.steps, args.eval_n)
        save()
        active_model = load(work / args.active_model)
        context = PromptContext.from_text(active_model.model, active_model.tokenizer, "a photo of the")
        result["active"] = active_prompt_learning(active_model, rounds=4, budget=10, seeds=ACTIVE_POOLS, pool_n=600,
                                                  test_n=args.eval_n, steps=50)
        result |= {"active_model": args.active_model, "context_vectors": context.context.shape[0]}
        save()
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)  # the runs are reproducible; the results files stay


if __name__ == "__main__":
    main()
