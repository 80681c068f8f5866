"""The catalogue's adaptation, continual pre-training and video items in one table: per item, the component and
its config key, the paper's claim, the headline number measured at small scale and the file with the details.
Every number is read from the committed results (benchmarks/results/catalogue_{adaptation,continual,video}.json);
an item or arm with no row there reads "not measured". Trains nothing; writes
benchmarks/results/catalogue_summary_adaptation_continual_video.{md,json}.

    PYTHONPATH=src python benchmarks/catalogue_summary_adaptation_continual_video.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from vlalign import provenance

RESULTS = Path(__file__).parent / "results"
NAME = "catalogue_summary_adaptation_continual_video"
SOURCES = ("adaptation", "continual", "video")  # catalogue_<source>.json
NOT_MEASURED = "**not measured**"
ADAPTER_ARMS = ("bottleneck", "bottleneck-shared", "bottleneck-gate-module", "bottleneck-gate-head",
                "bottleneck-gate-element", "lora", "lora-gate-element", "mma-shared", "bottleneck-frozen-text",
                "multitask-shared")
RANK_ARMS = ("rank-lora-l1", "rank-lora-l1-weak", "rank-lora-dense")
VIDEO_ARMS = ("mean", "attention", "attention, random segment sampling", "PLLaVA pool 4x2x2, mean",
              "PLLaVA pool 4x2x2, attention", "Slow-Fast, attention", "E-ViLM MVM, attention")


def read(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def missing(names, measured) -> str:
    """"; not measured: a, b" for the ``names`` without a row, or ""."""
    left = [n for n in names if n not in measured]
    return f"; {NOT_MEASURED}: {', '.join(f'`{n}`' for n in left)}" if left else ""


def adaptation_rows(adapt: dict) -> dict[str, dict]:
    return {r["arm"]: r for r in adapt.get("rows", [])}


def adapters(adapt: dict) -> str:
    rows = adaptation_rows(adapt)
    if "full-ft" not in rows:
        return NOT_MEASURED
    full = rows["full-ft"]
    parts = [f"{arm} {rows[arm]['fashion']:.3f} ({100 * rows[arm]['share']:.1f}% trainable)" for arm in ADAPTER_ARMS
             if arm in rows]
    mma = rows.get("mma-shared", {})
    router = (f"; MMA router weight on the image path: image tokens {mma['path1_image']:.3f}, text tokens "
              f"{mma['path1_text']:.3f}" if "path1_image" in mma else "")
    return (f"Fashion-MNIST zero-shot top-1 after {adapt['steps']} steps from a shapes CLIP (base "
            f"{adapt['base']['fashion']:.3f}): full fine-tuning {full['fashion']:.3f}; " + ", ".join(parts) + router
            + missing(ADAPTER_ARMS, rows))


def rank_lora(adapt: dict) -> str:
    rows = adaptation_rows(adapt)
    parts = [f"{arm}: fashion {rows[arm]['fashion']:.3f}, active ranks {rows[arm]['active_ranks']}/"
             f"{rows[arm]['ranks']}, merged fashion {rows[arm]['fashion_merged']:.3f}" for arm in RANK_ARMS
             if arm in rows]
    if not parts:
        return NOT_MEASURED
    full = rows.get("full-ft")
    reference = f" (full fine-tuning {full['fashion']:.3f})" if full else ""
    return "; ".join(parts) + reference + missing(RANK_ARMS, rows)


def merging(adapt: dict) -> str:
    rows = {r["arm"]: r for r in adapt.get("merging", [])}
    full = adaptation_rows(adapt).get("full-ft")
    if not rows or not full:
        return NOT_MEASURED
    base = adapt["base"]
    ends = (f"base {base['fashion']:.3f} / {base['shapes']:.3f}, full-ft {full['fashion']:.3f} / "
            f"{full['shapes']:.3f}")
    interpolated = ", ".join(f"{arm.removeprefix('interpolate ')} {r['fashion']:.3f} / {r['shapes']:.3f}"
                             for arm, r in rows.items() if arm.startswith("interpolate"))
    continued, residual = rows.get("continued base C"), rows.get("C + (full-ft - base)")
    transfer = (f"; residual on the continued base C: {residual['fashion']:.3f} / {residual['shapes']:.3f} vs C "
                f"{continued['fashion']:.3f} / {continued['shapes']:.3f}" if continued and residual else "")
    return f"fashion / shapes zero-shot: {ends}; interpolated {interpolated}{transfer}"


def pcb(adapt: dict) -> str:
    active = adapt.get("active")
    if not active:
        return NOT_MEASURED
    last = len(active["budgets"]) - 1
    finals = ", ".join(f"{s} {active['mean'][s][last]:.3f} ± {active['std'][s][last]:.3f} "
                       f"({active['classes_covered'][s]:.1f}/10 classes)" for s in active["mean"])
    return (f"Fashion-MNIST top-1 of CoOp prompts after {active['budgets'][last]} labels from a long-tailed pool "
            f"(zero-shot start {active['zero_shot']:.3f}, {active['seeds']} pools): {finals}")


def mean(values: list[float]) -> float:
    return statistics.mean(values)


def ctp(continual: dict) -> str:
    runs = continual.get("ctp")
    if not runs:
        return NOT_MEASURED
    average = {m: mean([runs[s][m]["average_accuracy"] for s in runs]) for m in ("seqft", "ctp", "joint")}
    forgetting = {m: mean([runs[s][m]["forgetting"] for s in runs]) for m in ("seqft", "ctp")}
    return (f"3-task shapes stream, average zero-shot accuracy: CTP {average['ctp']:.3f} vs sequential fine-tuning "
            f"{average['seqft']:.3f} (joint {average['joint']:.3f}); forgetting {forgetting['ctp']:.3f} vs "
            f"{forgetting['seqft']:.3f} ({len(runs)} seed(s))")


def vpgtrans(continual: dict) -> str:
    v = continual.get("vpgtrans")
    if not v:
        return NOT_MEASURED
    speed = v["scratch"]["steps"] / v["vpgtrans"]["steps"] if v["vpgtrans"]["steps"] else float("nan")
    return (f"lm-micro -> lm-mini, steps to the from-scratch run's final attribute accuracy {v['target']:.3f}: "
            f"VPGTrans {v['vpgtrans']['steps']} vs from scratch {v['scratch']['steps']} ({speed:.1f}x speed-up; "
            f"blind lm-mini, no image: {v['blind_large']:.3f})")


def mono_internvl(continual: dict) -> str:
    m = continual.get("mono_internvl")
    if not m:
        return NOT_MEASURED
    return (f"text-only retention {m['experts']['retention']:.3f} with visual experts vs "
            f"{m['unfrozen']['retention']:.3f} with the LM unfrozen; caption attribute accuracy "
            f"{m['experts']['attribute_accuracy']:.3f} vs {m['connector']['attribute_accuracy']:.3f} (connector only) "
            f"and {m['unfrozen']['attribute_accuracy']:.3f} (unfrozen)")


def video(results: dict) -> str:
    rows = {r["arm"]: r for r in results.get("rows", [])}
    if not rows:
        return NOT_MEASURED
    parts = [f"{arm} {r['t2i_R@10']:.3f} / {r['direction_accuracy']:.2f} / {r['appearance_accuracy']:.2f} / "
             f"{r['order_accuracy']:.2f}" for arm in VIDEO_ARMS if (r := rows.get(arm))]
    steps = sorted({r["steps"] for r in rows.values()})
    routing = next((r for r in results.get("routing", []) if r["frames"] == 4), None)
    saving = f"; Slow-Fast routing saves {routing['token_saving']:.0%} of patch tokens at 4 frames" if routing else ""
    return (f"moving-shapes clips, {'/'.join(map(str, steps))} steps, t2i R@10 (chance 0.02) / motion direction / "
            f"appear-disappear / event order (chance 0.50): " + "; ".join(parts) + saving + missing(VIDEO_ARMS, rows))


ITEMS = (  # (item, component and config key, the paper's claim, headline, details file)
    ("Adapters, VL-PET, LaVIN",
     ("`vlalign.models.adapters`, `modality_adapter`: `model.adapter.kind=bottleneck\\|lora\\|mma`, "
      "`model.adapter.gate=module\\|head\\|element`, `model.adapter.share=true`"),
     ("VL-Adapter: 4.18% of the parameters match full fine-tuning; VL-PET: +2.92% / +3.41% over VL-Adapter; "
      "LaVIN's MMA: 3.8M trainable parameters, 1.4 h for LLaMA-7B on ScienceQA"),
     adapters, "adaptation"),
    ("Dynamic Rank-Selective LoRA",
     "`vlalign.models.rank_lora`: `model.adapter.kind=rank-lora`, `model.adapter.sparsity=λ`",
     ("per-rank importance with a sparsity penalty adapts each module's rank; merged, no inference cost (no numbers "
      "in the abstract)"), rank_lora, "adaptation"),
    ("CTP", "`objective.name=ctp` (`objective.ctp.*`; recipe `continual-ctp`)",
     ("compatible momentum contrast + topology preservation beat sequential fine-tuning on P9D (no headline number "
      "in the abstract)"), ctp, "continual"),
    ("VPGTrans", "`model.vlm.inherit_vpg=<run>` (recipes `vpgtrans-warmup`, `vpgtrans-tune`)",
     "> 10x speed-up and 10.7% of the data, BLIP-2 OPT-2.7B -> OPT-6.7B", vpgtrans, "continual"),
    ("Mono-InternVL", "`model.vlm.visual_experts=true` (recipe `mono-visual-experts`)",
     "visual experts in a frozen LLM avoid continued pre-training's forgetting; +113 OCRBench over InternVL-1.5",
     mono_internvl, "continual"),
    ("PCB active prompt learning",
     "`vlalign.adapt.active_selection.select(\"pcb\", ...)` + `vlalign.adapt.prompt_learning`",
     ("uncertainty-based selection can do worse than random with a VLM (imbalanced classes); PCB's balancing beats "
      "both (no numbers in the abstract)"), pcb, "adaptation"),
    ("Merging, instruction residuals", "`vlalign merge BASE TUNED --alpha α`, `--onto C` (`vlalign.adapt.merging`)",
     ("interpolating weights trades between two models' abilities without training; an instruction residual "
      "transfers a tuning to a continually pre-trained base (no numbers)"), merging, "adaptation"),
    ("Video (HD-VILA, PLLaVA, E-ViLM, Keye-VL 1.5)",
     ("`vlalign.models.video`: `model.video.pool=mean\\|attention`, `model.video.tokens=pllava`, "
      "`model.video.slow_fast=true`, `model.video.sampling=random`, `objective.name=video-mvm`"),
     ("HD-VILA +40.4% rel. R@1 MSR-VTT; PLLaVA 58.1% MVBench; E-ViLM 39.3% MSRVTT-QA with 15% of the parameters; "
      "Keye-VL 1.5 fast frames at 30% of a slow frame's tokens"), video, "video"),
)


def summary_rows(data: dict[str, dict]) -> list[dict]:
    return [{"item": item, "component": component, "claim": claim, "measured": headline(data[source]),
             "details": f"catalogue_{source}.md"} for item, component, claim, headline, source in ITEMS]


def render(rows: list[dict], sources: dict[str, dict], stamp: dict) -> str:
    lines = ["# Catalogue summary: adaptation, continual pre-training, video", "",
             ("Each item's component, the paper's claim, and the headline number measured at small scale (tiny "
              "models on the shapes world, Fashion-MNIST and moving-shapes clips, one seed unless said, a shared "
              f"2-core CPU). Generated by `python benchmarks/{NAME}.py` from the JSON results; the linked "
              "files carry the settings, the full tables and their readings. The papers' numbers come from models "
              "and data orders of magnitude larger: no row reproduces or refutes them."), "",
             "| item | component and config key | paper's claim | measured at small scale | details |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['item']} | {r['component']} | {r['claim']} | {r['measured']} | [{r['details']}]({r['details']}) |"
              for r in rows]
    lines += ["", provenance.markdown_sources(sources), "", provenance.markdown(stamp)]
    return "\n".join(lines) + "\n"


def main() -> None:
    began = provenance.start()
    data = {name: read(f"catalogue_{name}") for name in SOURCES}
    rows = summary_rows(data)
    sources = {f"catalogue_{name}.json": data[name]["stamp"] for name in SOURCES if data[name]}
    stamp = provenance.stamp(began, seeds=[])  # trains nothing
    (RESULTS / f"{NAME}.md").write_text(render(rows, sources, stamp))
    (RESULTS / f"{NAME}.json").write_text(json.dumps(
        {"stamp": stamp, "source_stamps": sources, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
