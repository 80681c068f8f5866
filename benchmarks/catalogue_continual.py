"""Issue 13, items 3-5 at small scale: CTP continual pre-training, VPGTrans, Mono-InternVL visual experts.

    PYTHONPATH=src python benchmarks/catalogue_continual.py [--seeds 0 1] [--quick]

1. CTP (Zhu et al. 2023): the shapes world split by shape family into a stream of three tasks (round,
   angular, pointed; ``shapes-domain``), learnt one after another by a CLIP dual encoder. Task 1 is
   shared; tasks 2-3 continue by sequential fine-tuning (plain CLIP) or by CTP; joint training sees
   the union of all three for the same total steps. After every task, zero-shot colour+shape top-1
   (56 classes) on held-out single-object scenes of every domain gives the accuracy matrix
   a[i][j]; average accuracy A = mean_j a[T][j], forgetting F = mean_{j<T} (max_{i<T} a[i][j] - a[T][j]).
2. VPGTrans (Zhang et al. 2023): a stage-1 (captioning, LM frozen) VLM on a small LM (lm-micro) is
   transferred to a larger one (lm-mini, same tokenizer): projector warm-up (word-converter init, 5x
   lr, projector only), then VPG + projector. Against training the connector for the larger LM from
   scratch: steps and wall time to the from-scratch run's final teacher-forced attribute accuracy.
3. Mono-InternVL (Luo et al. 2024): stage-1 captioning on lm-micro with (a) the LM frozen, connector
   only (LLaVA), (b) the LM unfrozen (continued pre-training), (c) visual FFN experts in the frozen LM.
   Caption quality (teacher-forced attribute accuracy) against text-only retention (teacher-forced
   token accuracy and loss on held-out plain text, relative to the LM before the visual stage).

Writes ``benchmarks/results/catalogue_continual.{md,json}``. One training process at a time, one
thread; timings were taken on a shared CPU and are indicative only (load averages are recorded).
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

import torch

from vlalign import provenance
from vlalign.api import load
from vlalign.checkpoint import complete_checkpoints
from vlalign.config import apply_overrides
from vlalign.data.domains import domain_spec, domains
from vlalign.eval import run_tasks
from vlalign.eval.teacher_forced import attribute_token_ids, teacher_forced
from vlalign.data.specs import build_source
from vlalign.recipes import get_recipe
from vlalign.train import run_training

SPLIT = "family"
COMMON = ["train.threads=1", "train.log_every=25", "eval.tasks=[]"]
CAPTION_EVAL = "shapes:n=200,seed=1,size=32"  # held-out scenes (no training stage draws seed 1)
TEXT_EVAL = "shapes-qa:n=60,seed=1,size=32"
# Steps (default, --quick).
# Sized for a 2-core CPU shared with other jobs (~0.6 s per step of these tiny models under that load).
BUDGET = {"task": (150, 3), "vision": (300, 3), "lm": (300, 3), "stage1": (200, 4), "warmup": (30, 2),
          "every": (20, 2)}


def train(recipe: str, out: Path, overrides: list[str], seconds: dict) -> Path:
    cfg = apply_overrides(get_recipe(recipe), [*COMMON, *overrides])
    start = time.perf_counter()
    run_training(cfg, out, progress=False)
    seconds[out.name] = {"seconds": time.perf_counter() - start, "steps": cfg.train.steps,
                         "load": os.getloadavg()[0]}
    print(f"trained {out.name}: {seconds[out.name]['seconds']:.0f} s", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# 1. CTP


def domain_accuracies(run: Path, n: int) -> dict[str, float]:
    """Zero-shot colour+shape top-1 (56 classes) on held-out single-object scenes of every domain."""
    model = load(run)
    out = {}
    for domain in domains(SPLIT):
        spec = domain_spec(SPLIT, domain, n, seed=2, objects="1", size=32)
        rows = run_tasks(model, ["zeroshot"], spec).results
        out[domain] = next(r["top1"] for r in rows if r["labels"] == "shape+colour")
    return out


def continual_metrics(matrix: list[dict[str, float]]) -> dict[str, float]:
    """Average accuracy after the last task, and forgetting (best earlier accuracy minus final) over earlier tasks."""
    final = matrix[-1]
    forgetting = [max(row[d] for row in matrix[:-1]) - final[d] for d in list(final)[: len(matrix) - 1]]
    return {"average_accuracy": statistics.mean(final.values()),
            "forgetting": statistics.mean(forgetting) if forgetting else 0.0}


def run_ctp(work: Path, seed: int, steps: int, n_eval: int, seconds: dict) -> dict:
    names = domains(SPLIT)
    common = [f"train.seed={seed}", f"train.steps={steps}", f"train.checkpoint_every={steps}"]

    def data(domain: str) -> str:
        return f"data.train={domain_spec(SPLIT, domain, 4000, seed=0, size=32)}"

    first = train("continual-first", work / f"ctp-s{seed}-task1", [*common, data(names[0])], seconds)
    shared = domain_accuracies(first, n_eval)
    result = {}
    for method in ("seqft", "ctp"):
        previous, matrix = first, [shared]
        for t, domain in enumerate(names[1:], start=2):
            previous = train(f"continual-{method}", work / f"ctp-s{seed}-{method}-task{t}",
                             [*common, data(domain), f"model.init_from=[{previous}]"], seconds)
            matrix.append(domain_accuracies(previous, n_eval))
        result[method] = {"matrix": matrix, **continual_metrics(matrix)}
    union = ";".join(domain_spec(SPLIT, d, 4000, seed=0, size=32) for d in names)
    joint = train("continual-first", work / f"ctp-s{seed}-joint",
                  [f"train.seed={seed}", f"train.steps={steps * len(names)}",
                   f"train.checkpoint_every={steps * len(names)}", f"data.train=union:{union}"], seconds)
    final = domain_accuracies(joint, n_eval)
    result["joint"] = {"matrix": [final], "average_accuracy": statistics.mean(final.values()), "forgetting": None}
    return result


# ---------------------------------------------------------------------------------------------
# 2. VPGTrans and 3. Mono-InternVL (shared runs: the ViT, the two LMs, the small LM's stage 1)


def curve(run: Path) -> list[dict]:
    """Teacher-forced attribute accuracy at every checkpoint of ``run``."""
    points = []
    for checkpoint in complete_checkpoints(run / "checkpoints"):
        model = load(run, checkpoint=checkpoint)
        row = run_tasks(model, ["caption-tokens"], CAPTION_EVAL).results[0]
        points.append({"step": model.step, "attribute_accuracy": row["attribute_accuracy"],
                       "caption_loss": row["caption_loss"]})
    return points


def blind_accuracy(lm_run: Path) -> float:
    """The language model's attribute accuracy on the held-out captions with no image at all."""
    model = load(lm_run)
    samples = [build_source(CAPTION_EVAL)[i] for i in range(len(build_source(CAPTION_EVAL)))]
    truth, predicted, _ = teacher_forced(model, None, [s.caption for s in samples])
    attribute = torch.isin(truth, torch.tensor(sorted(attribute_token_ids(model))))
    return (predicted == truth)[attribute].float().mean().item()


def first_reaching(points: list[dict], target: float) -> int | None:
    return next((p["step"] for p in points if p["attribute_accuracy"] >= target), None)


def run_generative(work: Path, steps: dict, seconds: dict) -> tuple[dict, dict]:
    vision = train("cgvlm-vision", work / "vision", [f"train.steps={steps['vision']}",
                                                     f"train.checkpoint_every={steps['vision']}"], seconds)
    lm_common = [f"train.steps={steps['lm']}", f"train.checkpoint_every={steps['lm']}", f"data.eval={TEXT_EVAL}"]
    small = train("lm-pretrain", work / "lm-small", lm_common, seconds)
    (work / "lm-large").mkdir(parents=True, exist_ok=True)
    shutil.copy(small / "tokenizer.json", work / "lm-large" / "tokenizer.json")  # one tokenizer, as VPGTrans needs
    large = train("lm-pretrain", work / "lm-large", [*lm_common, "model.vlm.decoder=lm-mini"], seconds)

    every, total = steps["every"], steps["stage1"]
    stage = [f"train.steps={total}", f"train.checkpoint_every={every}", "train.keep_last_k=1000",
             "model.vlm.connector_width=64", f"data.eval={CAPTION_EVAL}"]
    small_stage1 = train("cgvlm-stage1-gen", work / "stage1-small",
                         [*stage, f"model.init_from=[{small},{vision}]"], seconds)
    scratch = train("cgvlm-stage1-gen", work / "stage1-large-scratch",
                    [*stage, "model.vlm.decoder=lm-mini", f"model.init_from=[{large},{vision}]"], seconds)
    warmup = train("vpgtrans-warmup", work / "vpgtrans-warmup",
                   ["model.vlm.connector_width=64", f"train.steps={steps['warmup']}", f"train.checkpoint_every={every}",
                    "train.keep_last_k=1000", f"model.init_from=[{large}]", f"model.vlm.inherit_vpg={small_stage1}"],
                   seconds)
    tune = train("vpgtrans-tune", work / "vpgtrans-tune",
                 [*stage, f"train.steps={total - steps['warmup']}", f"model.init_from=[{warmup}]"], seconds)
    inherit_only = train("cgvlm-stage1-gen", work / "vpg-inherit-random-projector",
                         [*stage, "model.vlm.decoder=lm-mini", f"model.init_from=[{large},{vision}]",
                          f"model.vlm.inherit_vpg={small_stage1}"], seconds)

    scratch_curve = curve(scratch)
    warm_curve = curve(warmup)
    tune_curve = [{**p, "step": p["step"] + steps["warmup"]} for p in curve(tune)]
    vpgtrans_curve = warm_curve + tune_curve
    inherit_curve = curve(inherit_only)
    target = scratch_curve[-1]["attribute_accuracy"]

    def per_step(*runs: Path) -> float:
        return sum(seconds[r.name]["seconds"] for r in runs) / sum(seconds[r.name]["steps"] for r in runs)

    def reach(points: list[dict], *runs: Path) -> dict:
        step = first_reaching(points, target)
        return {"steps": step, "seconds": None if step is None else step * per_step(*runs)}

    vpg = {"target": target, "blind_small": blind_accuracy(small), "blind_large": blind_accuracy(large),
           "scratch": {"curve": scratch_curve, **reach(scratch_curve, scratch)},
           "vpgtrans": {"curve": vpgtrans_curve, **reach(vpgtrans_curve, warmup, tune)},
           "inherit_random_projector": {"curve": inherit_curve, **reach(inherit_curve, inherit_only)},
           "small_stage1_final": curve(small_stage1)[-1]}

    # Mono-InternVL: the same LM (lm-micro) and ViT; the small stage-1 run is the frozen-LM connector arm.
    mono_stage = [f"train.steps={total}", f"train.checkpoint_every={total}", f"model.init_from=[{small},{vision}]",
                  "model.vlm.connector_width=64"]
    unfrozen = train("cgvlm-stage1-gen", work / "stage1-lm-unfrozen", [*mono_stage, "model.vlm.freeze=[vision]"],
                     seconds)
    experts = train("mono-visual-experts", work / "stage1-visual-experts", mono_stage, seconds)
    lm = load(small)
    lm_text = run_tasks(lm, ["text-tokens"], TEXT_EVAL).results[0]
    mono = {"lm": lm_text}
    ids = torch.randint(3, lm.tokenizer.vocab_size, (8, 20), generator=torch.Generator().manual_seed(0))
    for arm, run in (("connector", small_stage1), ("unfrozen", unfrozen), ("experts", experts)):
        model = load(run)
        text = run_tasks(model, ["text-tokens"], TEXT_EVAL).results[0]
        caption = run_tasks(model, ["caption-tokens"], CAPTION_EVAL).results[0]
        mask = torch.ones_like(ids, dtype=torch.bool)
        with torch.inference_mode():
            drift = (model.model(None, ids, mask).logits - lm.model(None, ids, mask).logits).abs().max().item()
        params = json.loads((run / "parameters.json").read_text())
        mono[arm] = {"attribute_accuracy": caption["attribute_accuracy"], "caption_loss": caption["caption_loss"],
                     "text_token_accuracy": text["token_accuracy"], "text_loss": text["text_loss"],
                     "retention": text["token_accuracy"] / lm_text["token_accuracy"] if lm_text["token_accuracy"] else None,
                     "max_text_logit_change": drift, "trainable": params["trainable"],
                     "seconds": seconds[run.name]["seconds"]}
    return vpg, mono


# ---------------------------------------------------------------------------------------------
# Report


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def write_outputs(out: Path, args, steps: dict, ctp: dict, vpg: dict, mono: dict, seconds: dict,
                  total: float, stamp: dict) -> None:
    seeds = args.seeds
    names = domains(SPLIT)
    quick = " (--quick: a smoke test, numbers meaningless)" if args.quick else ""
    load_avg = statistics.mean(s["load"] for s in seconds.values())
    lines = [
        "# Catalogue issue 13: continual pre-training (CTP), VPG transfer (VPGTrans), visual experts (Mono-InternVL)",
        "",
        f"torch {torch.__version__}, 1 process of 1 thread, {platform.machine()}; total wall time {total / 60:.1f} min"
        f"{quick}. Mean 1-min load average during the runs: {load_avg:.1f} (a shared 2-core CPU: wall times are "
        "indicative only). Method definitions and metrics: docs/continual.md.",
        "",
        "## Summary: each paper's claim beside what small scale shows",
        "",
        "| paper | claim | small scale here |",
        "| --- | --- | --- |",
    ]
    avg = {m: [ctp[s][m]["average_accuracy"] for s in seeds] for m in ("seqft", "ctp", "joint")}
    fgt = {m: [ctp[s][m]["forgetting"] for s in seeds] for m in ("seqft", "ctp")}
    v = vpg
    speed = (v["scratch"]["steps"] / v["vpgtrans"]["steps"]) if v["vpgtrans"]["steps"] else None
    wall = (v["scratch"]["seconds"] / v["vpgtrans"]["seconds"]) if v["vpgtrans"]["seconds"] else None
    lines += [
        (f"| CTP (ICCV 2023) | compatible momentum contrast + topology preservation beat sequential fine-tuning and "
         f"other CL baselines on P9D (no headline number in the abstract) | average accuracy {mean_std(avg['ctp'])} "
         f"vs seq. fine-tuning {mean_std(avg['seqft'])} (joint {mean_std(avg['joint'])}); forgetting "
         f"{mean_std(fgt['ctp'])} vs {mean_std(fgt['seqft'])} |"),
        (f"| VPGTrans (NeurIPS 2023) | > 10x speed-up and 10.7% of the data transferring BLIP-2's VPG from OPT-2.7B "
         f"to OPT-6.7B | {fmt(speed, 1)}x fewer steps, {fmt(wall, 1)}x less wall time to the from-scratch run's "
         f"final attribute accuracy {v['target']:.3f} (lm-micro -> lm-mini) |"),
        (f"| Mono-InternVL (2024) | delta tuning of visual experts in a frozen LLM avoids the forgetting of continued "
         f"pre-training; +113 OCRBench over InternVL-1.5 | text-only retention {fmt(mono['experts']['retention'])} "
         f"(logits bit-identical: max change {mono['experts']['max_text_logit_change']:.1e}) vs "
         f"{fmt(mono['unfrozen']['retention'])} with the LM unfrozen; attribute accuracy "
         f"{mono['experts']['attribute_accuracy']:.3f} vs {mono['connector']['attribute_accuracy']:.3f} "
         f"(connector only) and {mono['unfrozen']['attribute_accuracy']:.3f} (unfrozen) |"),
        "",
        "## 1. CTP: a task stream of shape families (round -> angular -> pointed)",
        "",
        (f"vit-micro/8 + text-micro, 32 px, batch 64, {steps['task']} steps per task (joint: "
         f"{steps['task'] * len(names)} on the union); seeds {seeds}. Accuracy: zero-shot colour+shape top-1 over "
         f"all 56 classes on {args.eval_n} held-out single-object scenes per domain. CTP: m = 0.9, τ = 0.07, both "
         "terms weight 1 (the reference code's), no feature queue."),
        "",
        "| method | average accuracy A (↑) | forgetting F (↓) | " + " | ".join(f"final {d}" for d in names) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    labels = {"seqft": "sequential fine-tuning", "ctp": "CTP", "joint": "joint training (upper bound)"}
    for method, label in labels.items():
        finals = [mean_std([ctp[s][method]["matrix"][-1][d] for s in seeds]) for d in names]
        forgetting = mean_std(fgt[method]) if method in fgt else "—"
        lines.append(f"| {label} | {mean_std(avg[method])} | {forgetting} | " + " | ".join(finals) + " |")
    lines += ["", "Accuracy matrix a[i][j] (after task i, on domain j), seed " + str(seeds[0]) + ":", "",
              "| method | after task | " + " | ".join(names) + " |", "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for method in ("seqft", "ctp"):
        for i, row in enumerate(ctp[seeds[0]][method]["matrix"], start=1):
            lines.append(f"| {method} | {i} ({names[i - 1]}) | " + " | ".join(f"{row[d]:.3f}" for d in names) + " |")
    lines += [
        "",
        "## 2. VPGTrans: the small LM's VPG moved to a larger LM",
        "",
        (f"Stage 1 (captioning; ViT and LM frozen), batch 32. Source: lm-micro (64 wide, 2 blocks) with its "
         f"connector trained {steps['stage1']} steps; target: lm-mini (128 wide, 3 blocks), same tokenizer. "
         f"VPGTrans = {steps['warmup']} warm-up steps (projector only, word-converter init, lr 1e-2 = 5x) + "
         f"{steps['stage1'] - steps['warmup']} steps of VPG + projector (lr 2e-3). Accuracy: teacher-forced "
         f"colour/shape-word accuracy on 200 held-out captions (blind LM, no image: lm-micro "
         f"{v['blind_small']:.3f}, lm-mini {v['blind_large']:.3f}); the small source run reached "
         f"{v['small_stage1_final']['attribute_accuracy']:.3f}."),
        "",
        "| run | steps to from-scratch final accuracy | wall time to it (s) | final accuracy | final caption loss |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, label in (("scratch", "from scratch (connector for lm-mini)"), ("vpgtrans", "VPGTrans (warm-up + tune)"),
                       ("inherit_random_projector", "VPG inherited, random projector, no warm-up (ablation)")):
        run = v[key]
        last = run["curve"][-1]
        lines.append(f"| {label} | {fmt(run['steps'])} | {fmt(run['seconds'], 0)} | {last['attribute_accuracy']:.3f} | "
                     f"{last['caption_loss']:.3f} |")
    lines += ["", "Curves (step: attribute accuracy):", ""]
    for key in ("scratch", "vpgtrans", "inherit_random_projector"):
        lines.append(f"- {key}: " + ", ".join(f"{p['step']}: {p['attribute_accuracy']:.3f}" for p in v[key]["curve"]))
    lines += [
        "",
        "## 3. Mono-InternVL: visual experts in a frozen LM, text-only retention",
        "",
        (f"Stage 1 (captioning) on lm-micro, {steps['stage1']} steps. Retention: teacher-forced next-token accuracy "
         f"on held-out plain-text documents (caption, question, answer) relative to the LM before the visual stage "
         f"({mono['lm']['token_accuracy']:.3f}, loss {mono['lm']['text_loss']:.3f}). `max Δ logit`: largest change "
         "of any text-only logit against the original LM."),
        "",
        "| arm | trainable params | attribute accuracy | caption loss | text token accuracy | text loss | retention | "
        "max Δ logit (text only) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, label in (("connector", "LM frozen, connector only (LLaVA)"), ("unfrozen", "LM unfrozen (continued pre-training)"),
                       ("experts", "visual experts, LM frozen (Mono-InternVL)")):
        m = mono[arm]
        lines.append(f"| {label} | {m['trainable']:,} | {m['attribute_accuracy']:.3f} | {m['caption_loss']:.3f} | "
                     f"{m['text_token_accuracy']:.3f} | {m['text_loss']:.3f} | {fmt(m['retention'])} | "
                     f"{m['max_text_logit_change']:.1e} |")
    lines += ["", "## Wall time per run (s, shared CPU)", "",
              ", ".join(f"{k} {s['seconds']:.0f}" for k, s in seconds.items()), "", provenance.markdown(stamp)]
    table = "\n".join(lines) + "\n"
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table)
    payload = {"stamp": stamp, "seeds": seeds, "steps": steps, "ctp": {str(s): r for s, r in ctp.items()},
               "vpgtrans": vpg, "mono_internvl": mono, "seconds": seconds, "total_seconds": total, "quick": args.quick}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="CTP stream seeds")
    parser.add_argument("--eval-n", type=int, default=200, help="held-out single-object scenes per domain")
    parser.add_argument("--work", default="benchmarks/.work/catalogue_continual", help="run directories (emptied)")
    parser.add_argument("--out", default="benchmarks/results/catalogue_continual", help="writes OUT.md and OUT.json")
    parser.add_argument("--quick", action="store_true", help="a few steps per run: checks the script runs")
    args = parser.parse_args()
    began = provenance.start()
    torch.set_num_threads(1)
    level = 1 if args.quick else 0
    steps = {name: budget[level] for name, budget in BUDGET.items()}
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    seconds: dict = {}
    vpg, mono = run_generative(work, steps, seconds)
    ctp = {seed: run_ctp(work, seed, steps["task"], args.eval_n, seconds) for seed in args.seeds}
    write_outputs(Path(args.out), args, steps, ctp, vpg, mono, seconds, time.perf_counter() - started,
                  provenance.stamp(began, sorted({*args.seeds, 0})))  # the CTP streams', the others' (recipe default)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
