"""Catalogue issue 12, the items benchmarks/catalogue_efficiency.py does not cover, against the same
baseline recipe: MindVL's averaged run and test-time resolution search, Open-Qwen2VL's sequence packing
(generative stage) and low-to-high resolution curriculum, TL;DR's embedding-cluster data reduction, and
SALT's small-teacher distillation early in training (with and without the teacher's data selection). Writes benchmarks/results/catalogue_efficiency2.{md,json}.

    nice -n 15 python benchmarks/catalogue_efficiency2.py                  # every section
    nice -n 15 python benchmarks/catalogue_efficiency2.py --only packing   # one section; the others are kept

Dual-encoder arms are catalogue_efficiency.py's baseline (micro towers, 32 px, batch 64, one thread,
CLIP on the shapes world) at the same step budget; quality is zero-shot top-1 (shape+colour) and
retrieval R@1 on held-out shapes. The packing arms train the CG-VLM pipeline's vlm arch (micro ViT,
lm-micro decoder, captions). Wall-clock on a shared 2-core machine is indicative only: the load average
is recorded beside every timing, and packing's speed is also timed in alternation on fixed batches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from catalogue_efficiency import TRAIN, base_overrides, final_loss, quality, train  # noqa: E402

from vlalign import provenance  # noqa: E402
from vlalign.api import load  # noqa: E402
from vlalign.config import apply_overrides  # noqa: E402
from vlalign.curate.reduction import pair_embeddings, random_subset, representative_subset  # noqa: E402
from vlalign.curate.similarity_filter import Selection  # noqa: E402
from vlalign.curate.teacher_selection import informative_subset, teacher_losses  # noqa: E402
from vlalign.data.convert import convert  # noqa: E402
from vlalign.data.specs import build_source  # noqa: E402
from vlalign.eval.resolution import resolution_search  # noqa: E402
from vlalign.recipes import SHAPES_HOLDOUT, get_recipe  # noqa: E402
from vlalign.train import run_training  # noqa: E402
from vlalign.train.averaging import average_run  # noqa: E402
from vlalign.train.setup import build_components  # noqa: E402
from vlalign.train.step import model_inputs  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NAME = "catalogue_efficiency2"
AVERAGE_LAST = 3
SEARCH_SIZES = [16, 24, 32, 40, 48, 64]
# Single-object scenes rendered at 64 px (the world's default) and resized to each searched size.
SELECT = f"shapes:n=500,seed=2,objects=1,holdout={SHAPES_HOLDOUT},holdout_mode=exclude"
TEST = f"shapes:n=500,seed=3,objects=1,holdout={SHAPES_HOLDOUT},holdout_mode=exclude"
CURRICULUM = [16, 32]
PACK_LENGTH = 128
REDUCE_FRACTIONS = [0.25]
REDUCE_CLUSTERS = 64
# SALT: the teacher is the same micro dual encoder trained for half the steps (micro is the smallest size);
# the student distils it for the first ~3/8 of training. Selection keeps the hard half after skipping the
# hardest 10% (the teacher's likely unfittable pairs).
SALT_TEACHER_STEPS_FRACTION = 0.5
SALT_KD_FRACTION = 0.375
SALT_KD_WEIGHT = 1.0
SALT_SHORT_KD_FRACTION, SALT_SHORT_KD_WEIGHT = 0.25, 0.3  # a lighter schedule: a quarter of training, weight 0.3
SALT_KEEP, SALT_SKIP_HARDEST = 0.5, 0.1
BATCH = 64


def load_average() -> float:
    return round(os.getloadavg()[0], 1)


def cost(run: dict) -> dict:
    return {k: run[k] for k in ("train_seconds", "gflop_per_pair", "pairs_per_s")} | {"load": load_average()}


def mindvl(steps: int, seed: int, work: Path) -> list[dict]:
    baseline = train("baseline", work, base_overrides(steps, seed))
    run_dir = Path(baseline["run"])
    rows = [{"method": "baseline (default recipe, last checkpoint)", **cost(baseline), **quality(load(run_dir)),
             "final_loss": final_loss(baseline["loss_curve"])}]
    averaged = average_run(run_dir, AVERAGE_LAST, work / "baseline-averaged")
    rows.append({"method": f"MindVL: `vlalign average --last {AVERAGE_LAST}` (checkpoints {steps // 10} steps apart)",
                 **cost(baseline), **quality(load(averaged))})
    found = resolution_search(load(run_dir), SEARCH_SIZES, SELECT, TEST)
    trained = next(p for p in found.curve if p["image_size"] == found.trained_size)
    best = next(p for p in found.curve if p["image_size"] == found.best_size)
    rows.append({"method": f"MindVL: test-time resolution search over {SEARCH_SIZES} (trained at 32)",
                 "curve": found.curve, "best_size": found.best_size, "trained_test": trained["test"],
                 "best_test": best["test"]})
    return rows


def curriculum(steps: int, seed: int, work: Path) -> list[dict]:
    run = train("curriculum", work, base_overrides(steps, seed) + [f"data.resolution_schedule={CURRICULUM}"])
    records = [json.loads(line) for line in (Path(run["run"]) / "metrics.jsonl").read_text().splitlines()]
    # FLOPs per pair differ by phase: average over the logged steps (equal spacing).
    mean_gflop = statistics.mean(r["flops_per_s"] / r["pairs_per_s"] for r in records) / 1e9
    return [{"method": f"Open-Qwen2VL: resolution curriculum {CURRICULUM} (half the steps each)", **cost(run),
             "gflop_per_pair": mean_gflop, **quality(load(run["run"])), "final_loss": final_loss(run["loss_curve"])}]


def generative_config(steps: int, seed: int, pack_length: int, decoder: str = "lm-micro"):
    return apply_overrides(get_recipe("cgvlm-stage1-gen"), [
        "model.init_from=[]", "model.vlm.freeze=[]", "data.train=shapes:n=6000,seed=0", f"train.steps={steps}",
        f"train.seed={seed}", "train.threads=1", "train.log_every=10", f"train.checkpoint_every={steps}",
        f"data.pack_length={pack_length}", f"model.vlm.decoder={decoder}"])


def time_packing(work: Path, seed: int, decoder: str, rounds: int = 3, num_batches: int = 4) -> dict[str, float]:
    """Forward + backward of the same batches, padded and packed, timed in alternation."""
    parts = build_components(generative_config(10, seed, 0, decoder), work / f"packing-timing-{decoder}")
    model, objective = parts.model, parts.objective
    batches = [batch for _, batch in zip(range(num_batches), iter(parts.loader))]
    times = {0: [], PACK_LENGTH: []}
    for _ in range(rounds):
        for length in times:
            model.pack_length = length
            t0 = time.perf_counter()
            for batch in batches:
                args, kwargs = model_inputs(batch)
                loss, _ = objective(model(*args, **kwargs), batch)
                loss.backward()
            times[length].append((time.perf_counter() - t0) / num_batches)
            model.zero_grad(set_to_none=True)
    padded, packed = statistics.median(times[0]), statistics.median(times[PACK_LENGTH])
    return {"step_seconds_padded": padded, "step_seconds_packed": packed, "step_speedup": padded / packed}


def packing(steps: int, seed: int, work: Path) -> list[dict]:
    rows = []
    for length in (0, PACK_LENGTH):
        out = work / f"generative-pack{length}"
        start = time.perf_counter()
        run_training(generative_config(steps, seed, length), out, progress=False)
        seconds = time.perf_counter() - start
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        row = {"method": ("generative stage (vlm, captions), padded rows" if not length else
                          f"Open-Qwen2VL: packed into rows of {length}"),
               "train_seconds": seconds, "pairs_per_s": statistics.median(r["pairs_per_s"] for r in records[1:] or records),
               "load": load_average(), "final_loss": final_loss([(r["step"], r["loss"]) for r in records]),
               "loss_curve": [(r["step"], r["loss"]) for r in records]}
        if length:
            row["padding"] = statistics.mean(r["pack/padding"] for r in records)
            row["unpacked_padding"] = statistics.mean(r["pack/unpacked_padding"] for r in records)
            row |= time_packing(work, seed, "lm-micro") | {"timing_load": load_average()}
            wide = time_packing(work, seed, "lm-small-cpu")
            row |= {"step_speedup_lm_small_cpu": wide["step_speedup"], "timing_load_lm_small_cpu": load_average()}
        rows.append(row)
    return rows


def tldr(steps: int, seed: int, work: Path) -> list[dict]:
    """The baseline as the embedding model; k-means subsets against random ones of equal size, trained
    for the same steps (a smaller set is seen for more epochs)."""
    scorer = train("scorer", work, base_overrides(steps, seed))
    rows = [{"method": "full training set (8000 pairs; the embedding model)", **cost(scorer),
             **quality(load(scorer["run"])), "kept": 8000, "pairs_seen": steps * BATCH}]
    source = build_source(TRAIN)
    points, readable = pair_embeddings(load(scorer["run"]), source)
    for fraction in REDUCE_FRACTIONS:
        for kind in ("k-means", "random"):
            chosen = (representative_subset(points, fraction, REDUCE_CLUSTERS, seed) if kind == "k-means"
                      else random_subset(len(readable), fraction, seed))
            shards = work / f"{kind}-{fraction}"
            convert(Selection(source, [readable[i] for i in chosen.tolist()]), shards, shard_size=2000)
            run = train(f"{kind}-{fraction}", work, base_overrides(steps, seed) + [f"data.train=wds:{shards}/shards.json"])
            label = (f"TL;DR: k-means ({REDUCE_CLUSTERS} clusters) keeps {fraction:.0%}" if kind == "k-means"
                     else f"random {fraction:.0%} (equal size)")
            rows.append({"method": label, **cost(run), **quality(load(run["run"])), "kept": len(chosen),
                         "pairs_seen": steps * BATCH})
    return rows


def salt_order(selected: list[int], num_pairs: int, kd_steps: int, steps: int, seed: int) -> list[int]:
    """SALT_DS's data as one ordered list (read with data.order=sequential): the KD phase's kd_steps batches
    drawn from the selected pairs (reshuffled each pass), the remaining steps' batches from the whole set."""
    g = torch.Generator().manual_seed(seed)
    order = []
    while len(order) < kd_steps * BATCH:
        order += [selected[i] for i in torch.randperm(len(selected), generator=g).tolist()]
    order = order[: kd_steps * BATCH]
    while len(order) < steps * BATCH:
        order += torch.randperm(num_pairs, generator=g).tolist()
    return order[: steps * BATCH]


def parameters(run: str) -> int:
    return sum(p.numel() for p in load(run).model.parameters())


def salt(steps: int, seed: int, work: Path) -> list[dict]:
    """Two small teachers distilled for the first kd_steps only (SALT), against the baseline: the student's
    recipe trained for half the steps, and a smaller model (one text block instead of two) trained for all
    of them; then SALT_DS, the KD phase's batches drawn from the first teacher's informative pairs."""
    teacher_steps, kd_steps = round(steps * SALT_TEACHER_STEPS_FRACTION), round(steps * SALT_KD_FRACTION)
    teacher = train("teacher", work, base_overrides(teacher_steps, seed))
    rows = [{"method": f"SALT teacher: the same recipe, {teacher_steps} steps", **cost(teacher),
             **quality(load(teacher["run"])), "pairs_seen": teacher_steps * BATCH,
             "parameters": parameters(teacher["run"])}]
    small = train("teacher-small", work, base_overrides(steps, seed) + ["model.text.depth=1"])
    rows.append({"method": f"SALT teacher (smaller): 1 text block instead of 2, {steps} steps", **cost(small),
                 **quality(load(small["run"])), "pairs_seen": steps * BATCH, "parameters": parameters(small["run"])})
    baseline = train("baseline", work, base_overrides(steps, seed))
    rows.append({"method": "baseline for SALT (no distillation)", **cost(baseline), **quality(load(baseline["run"])),
                 "pairs_seen": steps * BATCH, "final_loss": final_loss(baseline["loss_curve"]),
                 "parameters": parameters(baseline["run"])})

    def distil(run: dict, kd: int = kd_steps, weight: float = SALT_KD_WEIGHT) -> list[str]:
        return ["objective.name=salt", f"objective.salt.teacher={run['run']}", f"objective.salt.kd_steps={kd}",
                f"objective.salt.kd_weight={weight}"]

    short = round(steps * SALT_SHORT_KD_FRACTION)
    for name, label, source_run, kd, weight in (
            ("salt", f"the {teacher_steps}-step teacher", teacher, kd_steps, SALT_KD_WEIGHT),
            ("salt-small", "the smaller teacher", small, kd_steps, SALT_KD_WEIGHT),
            ("salt-small-short", "the smaller teacher", small, short, SALT_SHORT_KD_WEIGHT)):
        run = train(name, work, base_overrides(steps, seed) + distil(source_run, kd, weight))
        rows.append({"method": f"SALT: distil {label} (weight {weight:g}) for the first {kd} of {steps} steps, then "
                               "CLIP alone", **cost(run), **quality(load(run["run"])), "pairs_seen": steps * BATCH,
                     "kd_steps": kd, "kd_weight": weight, "teacher_seconds": source_run["train_seconds"]})
    source = build_source(TRAIN)
    points, readable = pair_embeddings(load(teacher["run"]), source)
    half = points.shape[1] // 2
    scale = load(teacher["run"]).model.logit_scale.exp().item()
    losses = teacher_losses(points[:, :half], points[:, half:], scale, seed=seed)
    chosen = informative_subset(losses, SALT_KEEP, SALT_SKIP_HARDEST).tolist()
    order = salt_order(chosen, len(readable), kd_steps, steps, seed)  # positions in ``readable``
    shards = work / "salt-ds-data"
    convert(Selection(source, [readable[i] for i in order]), shards, shard_size=2000)
    ds = train("salt-ds", work, base_overrides(steps, seed) + distil(teacher) + [
        f"data.train=wds:{shards}/shards.json", "data.order=sequential"])
    rows.append({"method": f"SALT_DS: as SALT with the {teacher_steps}-step teacher, the KD phase's batches from its "
                           f"informative {SALT_KEEP:.0%} (hardest {SALT_SKIP_HARDEST:.0%} skipped)",
                 **cost(ds), **quality(load(ds["run"])), "pairs_seen": steps * BATCH, "kd_steps": kd_steps,
                 "selected": len(chosen), "teacher_seconds": teacher["train_seconds"],
                 "selected_loss": losses[chosen].mean().item(), "all_loss": losses.mean().item()})
    return rows


SECTIONS = {"mindvl": mindvl, "curriculum": curriculum, "packing": packing, "tldr": tldr, "salt": salt}

CLAIMS = {
    "baseline": "—",
    "average": "MindVL: weight averaging over checkpoints boosts performance (no separate number in the abstract)",
    "resolution search": "MindVL: test-time resolution search boosts performance (no separate number in the abstract)",
    "curriculum": "Open-Qwen2VL: low-to-high dynamic resolution makes pre-training efficient (442 A100 h in all)",
    "padded rows": "—",
    "packed": "Open-Qwen2VL / MindVL: multimodal packing significantly raises end-to-end training speed",
    "full training set": "—",
    "TL;DR": "TL;DR: CC3M 2.82M -> 0.67M (24%), YFCC15M -> 16.7%, with similar or better downstream results",
    "random": "(TL;DR's baseline: random subsets of equal size do worse)",
    "SALT teacher": "(SALT's small LM: 1.5B params vs the 2.8B student, trained first)",
    "SALT_DS": "SALT with the small LM's selection of hard, informative examples for the KD phase: the paper's best "
               "variant (METHODS.md row 48: 2.8B LLM with a 1.5B SLM on the Pile, less training time)",
    "SALT:": "SALT: the small LM's soft labels early in training, then off, give a better 2.8B LLM in less training "
             "time than standard training (METHODS.md row 48; no single number recorded there)",
}


def claim(method: str) -> str:
    return next((text for key, text in CLAIMS.items() if key in method), "")


def verdict(row: dict, base: dict, sections: dict) -> str:
    m = row["method"]

    def delta(key):
        return f"{row[key] - base[key]:+.3f}" if key in row and key in base else "?"

    if "SALT" in m:
        return salt_verdict(row, sections["salt"])
    if m.startswith("baseline"):
        return "reference"
    if "resolution search" in m:
        curve = ", ".join(f"{p['image_size']}: {p['select']:.3f}" for p in row["curve"])
        return (f"selection-split zero-shot by size {curve}; picked {row['best_size']} -> test {row['best_test']:.3f} "
                f"vs {row['trained_test']:.3f} at the trained size ({row['best_test'] - row['trained_test']:+.3f})")
    if "padded rows" in m:
        return "reference for packing"
    if "packed" in m:
        padded = sections["packing"][0]
        return (f"padding {row['unpacked_padding']:.0%} -> {row['padding']:.0%} of decoder entries; forward+backward "
                f"{row['step_speedup']:.2f}× faster on the same batches (alternated; load {row['timing_load']}), "
                f"{row['step_speedup_lm_small_cpu']:.2f}× with the wider lm-small-cpu decoder (width 256, 6 blocks); "
                f"final loss {row['final_loss']:.3f} vs {padded['final_loss']:.3f} padded (same math; different "
                "float summation order)")
    if m.startswith("full training set"):
        return "reference for the reduced sets"
    if "TL;DR" in m or m.startswith("random"):
        full = sections["tldr"][0]
        return (f"{row['kept']} pairs kept; zero-shot {row['zeroshot_top1'] - full['zeroshot_top1']:+.3f}, t2i R@1 "
                f"{row['t2i_R@1'] - full['t2i_R@1']:+.3f} vs the full set")
    if "curriculum" in m:
        return (f"{base['gflop_per_pair'] / row['gflop_per_pair']:.2f}× fewer training FLOPs per pair; zero-shot "
                f"{delta('zeroshot_top1')}, t2i R@1 {delta('t2i_R@1')} vs the baseline")
    return f"zero-shot {delta('zeroshot_top1')}, t2i R@1 {delta('t2i_R@1')} vs the baseline"


def salt_verdict(row: dict, rows: list[dict]) -> str:
    base = next(r for r in rows if r["method"].startswith("baseline for SALT"))
    if row is base:
        return f"reference for SALT (the recipe and seed of the baseline above; {row['parameters']} parameters)"
    deltas = (f"zero-shot {row['zeroshot_top1'] - base['zeroshot_top1']:+.3f}, t2i R@1 "
              f"{row['t2i_R@1'] - base['t2i_R@1']:+.3f}, i2t R@1 {row['i2t_R@1'] - base['i2t_R@1']:+.3f} vs the baseline")
    if "teacher" in row["method"] and "kd_steps" not in row:
        return f"{row['parameters']} parameters, {row['train_seconds']:.0f} s to train; {deltas}"
    text = (f"{deltas}; same {row['pairs_seen']} pairs; cost: the teacher's forward on every batch (in train s) "
            f"+ {row['teacher_seconds']:.0f} s to train it")
    if "selected" in row:
        text += (f"; {row['selected']} pairs selected, mean teacher loss {row['selected_loss']:.2f} vs "
                 f"{row['all_loss']:.2f} over all")
    return text


def table(sections: dict, steps: int) -> str:
    base = sections.get("mindvl", [{}])[0]
    lines = ["| method | zero-shot top-1 | t2i R@1 | i2t R@1 | GFLOP/pair (train) | train s | pairs seen | pairs/s | "
             "load | paper's claim | what small scale shows |", "|" + "---|" * 11]

    def cell(row, key, fmt="{:.3f}"):
        return fmt.format(row[key]) if key in row else "–"

    for name in SECTIONS:
        for r in sections.get(name, []):
            lines.append(f"| {r['method']} | {cell(r, 'zeroshot_top1')} | {cell(r, 't2i_R@1')} | {cell(r, 'i2t_R@1')} | "
                         f"{cell(r, 'gflop_per_pair')} | {cell(r, 'train_seconds', '{:.0f}')} | {cell(r, 'pairs_seen', '{}')} | "
                         f"{cell(r, 'pairs_per_s', '{:.0f}')} | {cell(r, 'load', '{}')} | {claim(r['method'])} | "
                         f"{verdict(r, base, sections)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--generative-steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS), help="run these sections (repeatable)")
    parser.add_argument("--work", default="benchmarks/.work/catalogue_efficiency2")
    args = parser.parse_args()
    began = provenance.start()
    path = RESULTS / f"{NAME}.json"
    stored = json.loads(path.read_text()) if path.is_file() else {"sections": {}}
    before = stored.get("stamp")
    for name in args.only or list(SECTIONS):
        work = Path(args.work) / name
        shutil.rmtree(work, ignore_errors=True)  # a finished run would be resumed (0 steps) and mis-timed
        start = time.perf_counter()
        steps = args.generative_steps if name == "packing" else args.steps
        stored["sections"][name] = SECTIONS[name](steps, args.seed, work)
        stored.setdefault("seconds", {})[name] = time.perf_counter() - start
        stored["steps"], stored["generative_steps"], stored["seed"] = args.steps, args.generative_steps, args.seed
        stamps = stored.setdefault("section_stamps", {})
        stamps[name] = provenance.stamp(began, [args.seed])
        stored["stamp"] = provenance.of_sections(stamps[name], list(stored["sections"]), stamps, before)
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=1))
        write_markdown(stored)
        shutil.rmtree(work, ignore_errors=True)


def write_markdown(stored: dict) -> None:
    minutes = sum(stored["seconds"].values()) / 60
    md = (f"# Efficiency components, part 2 (catalogue issue 12) vs the baseline\n\n"
          f"Dual-encoder arms: {stored['steps']} steps × 64 pairs, micro towers, 32 px, 1 thread, seed {stored['seed']} "
          f"(catalogue_efficiency.py's baseline; run-to-run spread there: ±0.02 zero-shot). Packing arms: the vlm arch "
          f"(micro ViT + lm-micro decoder, all trained) on shapes captions, {stored['generative_steps']} steps × 32.\n\n"
          f"{table(stored['sections'], stored['steps'])}\n\n"
          f"Sections took {minutes:.1f} min in all (`nice -n 15`, a 2-core machine shared with other jobs; `load` is the "
          "1-minute load average when the row was measured: wall-clock figures are indicative only, FLOPs are exact). "
          "Curves and every number are in the JSON file.\n\n"
          f"{provenance.markdown(stored['stamp'])}\n")
    (RESULTS / f"{NAME}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
