"""CG-VLM at small scale: does contrastive alignment make instruction tuning data-efficient?

    PYTHONPATH=src python benchmarks/cgvlm.py [--seeds 0 1] [--jobs 2] [--work benchmarks/.work/cgvlm]

The claim (Liu et al. 2023, arXiv 2311.17945, abstract): with contrastive + generative alignment in
stage 1, instruction tuning on 10% of the data reaches 95% of LLaVA's full-data result. Here, on the
shapes world (METHODS.md §3; recipes cgvlm-vision, lm-pretrain, cgvlm-stage1-gen/-cg, cgvlm-stage2):

1. once: a CLIP run trains the ViT; a tiny causal LM is pre-trained on text only;
2. per seed, two stage-1 alignments of the connector (ViT and LM frozen): generative only (LLaVA)
   and generative + patch-token contrastive (CG-VLM, λ = 1); and, as a control, no stage 1;
3. each followed by stage 2 (connector + LM) on 1%, 10% and 100% of the instruction data for the
   same number of steps (a fixed compute budget: smaller fractions are repeated more often);
4. exact-match VQA accuracy on held-out scenes, and the paper's diagnostic after stage 1: cosine
   similarity of projected image features to related vs unrelated LM token embeddings.

Writes ``benchmarks/results/cgvlm.md`` and ``cgvlm.json``. Runs are kept under ``--work`` (a rerun
reuses finished ones: every run directory resumes). The (variant, seed) chains run in ``--jobs``
processes of one torch thread each (on a busy CPU one thread per process is the fastest). The
default budget is sized for a 2-core CPU; ``--quick`` is a smoke test of the script itself.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from vlalign import provenance
from vlalign.api import load
from vlalign.config import RunConfig, apply_overrides
from vlalign.data.specs import build_source
from vlalign.eval import run_tasks
from vlalign.recipes import get_recipe
from vlalign.train import run_training

FRACTIONS = (0.01, 0.1, 1.0)
VARIANTS = {"gen": "cgvlm-stage1-gen", "cg": "cgvlm-stage1-cg", "none": None}  # stage-1 recipe; None = skip
LABELS = {"gen": "generative only (LLaVA)", "cg": "contrastive + generative (CG-VLM)",
          "none": "no stage 1 (control)"}
EVAL_SPEC = "shapes-qa:n=100,seed=1"  # held-out scenes: no training stage draws from seed 1
STAGE2_DATA = "shapes-qa:n=400,seed=2"  # ~5.4k questions: 100% is about one pass in the stage-2 budget

# Steps per stage: (default, --quick).
BUDGET = {"vision": (600, 4), "lm": (400, 4), "stage1": (300, 4), "stage2": (300, 4)}


def train(recipe: str, out: Path, overrides: list[str]) -> tuple[RunConfig, float]:
    cfg = apply_overrides(get_recipe(recipe), overrides)
    start = time.perf_counter()
    run_training(cfg, out, progress=False)
    return cfg, time.perf_counter() - start


def vqa_accuracy(run: Path) -> dict[str, float]:
    rows = run_tasks(load(run), ["vqa"], EVAL_SPEC).results
    return {row["labels"]: row["accuracy"] for row in rows}


def stage1_diagnostics(run: Path) -> dict[str, float]:
    rows = run_tasks(load(run), ["alignment", "caption", "mir-vlm"], EVAL_SPEC).results
    keep = ("cos_related", "cos_unrelated", "cos_gap", "patch_cos_unrelated", "i2t_R@1", "attribute_recall",
            "attribute_precision", "mir")
    return {k: row[k] for row in rows for k in keep if k in row}


def blind_baseline(limit: int) -> dict[str, float]:
    """The most common training answer to each question text (or its type): what no image can beat."""
    train_items = build_source(STAGE2_DATA).items
    by_question = defaultdict(Counter)
    by_type = defaultdict(Counter)
    for _, question, answer, kind in train_items:
        by_question[question][answer] += 1
        by_type[kind][answer] += 1
    correct = defaultdict(list)
    for _, question, answer, kind in build_source(EVAL_SPEC).items[:limit]:
        guess = (by_question.get(question) or by_type[kind]).most_common(1)[0][0]
        correct[kind].append(guess == answer)
        correct["all"].append(guess == answer)
    return {kind: sum(v) / len(v) for kind, v in correct.items()}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def run_chain(work: Path, variant: str, seed: int, steps: dict, generative: list[str]) -> dict:
    """Stage 1 with one loss (or none), then stage 2 on every fraction; runs in a worker process."""
    torch.set_num_threads(1)
    seconds, diagnostics, accuracy = {}, {}, {}
    pretrained = f"{work / 'lm'},{work / 'vision'}"
    start_from = pretrained  # the control starts stage 2 with an untrained connector
    if VARIANTS[variant] is not None:
        stage1 = work / f"stage1-{variant}-seed{seed}"
        _, seconds[stage1.name] = train(VARIANTS[variant], stage1, [
            *generative, f"train.seed={seed}", f"train.steps={steps['stage1']}", f"model.init_from=[{pretrained}]"])
        diagnostics, start_from = stage1_diagnostics(stage1), str(stage1)
    for fraction in FRACTIONS:
        stage2 = work / f"stage2-{variant}-seed{seed}-frac{fraction:g}"
        _, seconds[stage2.name] = train("cgvlm-stage2", stage2, [
            *generative, f"train.seed={seed}", f"train.steps={steps['stage2']}",
            f"data.train={STAGE2_DATA}", f"data.fraction={fraction}", f"model.init_from=[{start_from}]"])
        accuracy[fraction] = vqa_accuracy(stage2)
        print(f"seed {seed} {variant} {fraction:>5}: vqa {accuracy[fraction]['all']:.3f}", flush=True)
    return {"variant": variant, "seed": seed, "stage1": diagnostics, "stage2": accuracy, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2, help="(variant, seed) chains trained at once")
    parser.add_argument("--work", default="benchmarks/.work/cgvlm", help="run directories")
    parser.add_argument("--out", default="benchmarks/results/cgvlm", help="writes OUT.md and OUT.json")
    parser.add_argument("--quick", action="store_true", help="a few steps per stage: checks the script runs")
    args = parser.parse_args()
    began = provenance.start()
    torch.set_num_threads(1)
    work, level = Path(args.work), 1 if args.quick else 0
    steps = {stage: budget[level] for stage, budget in BUDGET.items()}
    common = ["train.threads=1", "train.log_every=25"]
    generative = [*common, f"data.eval={EVAL_SPEC}", "eval.tasks=[]"]
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    # The two shared runs are independent: train them side by side too.
    with ProcessPoolExecutor(min(args.jobs, 2), mp_context=multiprocessing.get_context("spawn")) as pool:
        vision = pool.submit(train, "cgvlm-vision", work / "vision", [*common, f"train.steps={steps['vision']}"])
        lm = pool.submit(train, "lm-pretrain", work / "lm", [*generative, f"train.steps={steps['lm']}"])
        seconds["vision"], seconds["lm"] = vision.result()[1], lm.result()[1]
    lm_text_qa = {r["labels"]: r["accuracy"] for r in run_tasks(load(work / "lm"), ["text-qa"], EVAL_SPEC).results}

    results: dict = {"stage1": defaultdict(dict), "stage2": defaultdict(lambda: defaultdict(dict))}
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        chains = [pool.submit(run_chain, work, variant, seed, steps, generative)
                  for seed in args.seeds for variant in VARIANTS]
        for chain in chains:
            done = chain.result()
            if done["stage1"]:
                results["stage1"][done["variant"]][done["seed"]] = done["stage1"]
            for fraction, accuracy in done["stage2"].items():
                results["stage2"][done["variant"]][fraction][done["seed"]] = accuracy
            seconds |= done["seconds"]

    eval_questions = get_recipe("cgvlm-stage2").eval.vqa_n
    blind = blind_baseline(eval_questions)
    total = time.perf_counter() - started
    write_outputs(Path(args.out), args, steps, results, blind, lm_text_qa, seconds, total,
                  provenance.stamp(began, args.seeds))


def write_outputs(out: Path, args, steps: dict, results: dict, blind: dict, lm_text_qa: dict, seconds: dict,
                  total: float, stamp: dict) -> None:
    seeds = args.seeds
    stage2 = results["stage2"]

    def accs(variant: str, fraction: float, kind: str = "all") -> list[float]:
        return [stage2[variant][fraction][s][kind] for s in seeds]

    kinds = sorted(next(iter(stage2["gen"][1.0].values())))
    quick = " (--quick: a smoke test, numbers meaningless)" if args.quick else ""
    lines = [
        "# CG-VLM at small scale: contrastive + generative vs generative-only alignment",
        "",
        (f"torch {torch.__version__}, {args.jobs} process(es) of 1 thread, {platform.machine()}; "
         f"seeds {seeds}; total wall time {total / 60:.1f} min{quick}."),
        (f"Steps: vision (CLIP) {steps['vision']}, text-only LM {steps['lm']}, stage 1 {steps['stage1']}, "
         f"stage 2 {steps['stage2']} (batch 32). Stage-2 data `{STAGE2_DATA}` "
         f"({len(build_source(STAGE2_DATA))} questions); held-out eval `{EVAL_SPEC}`, first "
         f"{get_recipe('cgvlm-stage2').eval.vqa_n} questions."),
        "",
        ("The CLIP vision tower and the text-only LM are trained once and shared; the seeds vary stage 1 "
         "and stage 2 (initialisation, data order, the subsampled fraction). Every stage-2 run takes the same "
         "number of steps, so 1% of the data is seen many times over and 100% about once."),
        "",
        "## Held-out VQA exact-match accuracy after stage 2 (mean ± std over seeds)",
        "",
        "| stage 1 | 1% | 10% | 100% | 10% / gen-only 100% |",
        "| --- | --- | --- | --- | --- |",
    ]
    reference = statistics.mean(accs("gen", 1.0))
    for variant, label in LABELS.items():
        cells = [mean_std(accs(variant, f)) for f in FRACTIONS]
        ratio = statistics.mean(accs(variant, 0.1)) / reference if reference else float("nan")
        lines.append(f"| {label} | {' | '.join(cells)} | {ratio:.2f} |")
    lines += [
        "",
        (f"Blind baseline (most common training answer per question): {blind['all']:.3f}. "
         f"Text-only LM given the caption as text (`text-qa`): {lm_text_qa['all']:.3f}."),
        "",
        "## By question type (100% and 10% of the data)",
        "",
        "| stage 1 | data | " + " | ".join(kinds) + " |",
        "| --- | --- | " + " | ".join("---" for _ in kinds) + " |",
    ]
    for variant in LABELS:
        for fraction in (1.0, 0.1):
            cells = [mean_std(accs(variant, fraction, k)) for k in kinds]
            lines.append(f"| {variant} | {fraction:.0%} | " + " | ".join(cells) + " |")
    lines.append("| blind | — | " + " | ".join(f"{blind.get(k, float('nan')):.3f}" for k in kinds) + " |")
    diag_keys = ("cos_related", "cos_unrelated", "cos_gap", "patch_cos_unrelated", "i2t_R@1", "attribute_recall",
                 "attribute_precision", "mir")
    lines += [
        "",
        "## Stage-1 diagnostic (held-out images)",
        "",
        ("Cosine similarity between the mean-pooled projected image features and the LM's input embeddings "
         "of the image's own caption tokens (related) or of other captions' tokens (unrelated); "
         "`patch_cos_unrelated` uses single patches. `i2t_R@1`: the true caption ranks first by CG-VLM's "
         "averaged image-sentence similarity (chance 0.01). Attribute recall/precision: greedy stage-1 captions. "
         "`mir`: the Modality Integration Rate of the language model on image-prefix vs caption tokens (lower: "
         "image tokens read more like text; task `mir-vlm`)."),
        "",
        "| stage 1 | " + " | ".join(diag_keys) + " |",
        "| --- | " + " | ".join("---" for _ in diag_keys) + " |",
    ]
    for variant in ("gen", "cg"):
        cells = [mean_std([results["stage1"][variant][s][k] for s in seeds]) for k in diag_keys]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "## Wall time per run (s)", "", ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
              "", provenance.markdown(stamp)]
    table = "\n".join(lines) + "\n"
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table)
    payload = {"stamp": stamp, "seeds": seeds, "steps": steps, "fractions": FRACTIONS, "eval": EVAL_SPEC,
               "stage2_data": STAGE2_DATA, "stage1": results["stage1"],
               "stage2": {v: {str(f): d for f, d in fr.items()} for v, fr in stage2.items()},
               "blind": blind, "lm_text_qa": lm_text_qa, "seconds": seconds, "total_seconds": total,
               "quick": args.quick}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
