"""The default recipe over seeds, against its targets: what `vlalign train` (no flags) reaches and how long it takes.

    python benchmarks/default_recipe.py                      # seeds 0-4, runs under runs/default-recipe
    python benchmarks/default_recipe.py --seeds 0-2 --out /tmp/default
    python benchmarks/default_recipe.py --timing --seeds 0 --out /tmp/timing   # wall time alone, on a quiet machine

Each seed is one `vlalign train --out OUT/seed-S --set train.seed=S` process, timed from start to exit
(set-up, training, evaluation and the report), with the load average before and after it: the time
target holds for an idle machine, so a run that started under load says so. The metrics are aggregated
with `vlalign.eval.aggregate` (mean, sample std, min, max over seeds) and written, with a provenance
stamp, to benchmarks/results/default_recipe.{json,md}. ``--timing`` writes only the wall time of its runs, to
default_recipe_timing.{json,md}: the time target is measured apart, when nothing else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from vlalign import provenance
from vlalign.eval.aggregate import summarize
from vlalign.train.seeds import parse_seeds

RESULTS = Path(__file__).resolve().parent / "results"

# (metric, statistic, threshold, what it means): every target must hold for the recipe to meet its goal.
TARGETS = (
    ("zeroshot/shape+colour/top1", "mean", 0.90, "held-out shape+colour zero-shot, mean"),
    ("zeroshot/shape+colour/top1", "min", 0.85, "held-out shape+colour zero-shot, worst seed"),
    ("zeroshot/shape+colour/top1_small", "mean", 0.80, "small objects (13 px), mean"),
    ("compositional/shape+colour/top1", "mean", 0.85, "unseen colour-shape pairs, mean"),
    ("retrieval/t2i_R@1", "mean", 0.60, "text->image R@1, mean"),
)
TIME_TARGET_S = 300.0  # 5 minutes on an idle 2-core CPU, everything included
SHOWN = ("zeroshot/shape+colour/top1", "zeroshot/shape+colour/top1_small", "zeroshot/shape+colour/top1_large",
         "zeroshot/shape/top1", "zeroshot/colour/top1", "compositional/shape+colour/top1", "retrieval/t2i_R@1",
         "retrieval/i2t_R@1")


def run_seed(out: Path, seed: int) -> dict:
    """Train and evaluate one seed in a fresh process (skipped when its eval.json exists); its wall time
    and the load average around it."""
    run = out / f"seed-{seed}"
    if (run / "eval.json").exists():
        return json.loads((run / "timing.json").read_text())
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    cmd = [sys.executable, "-m", "vlalign", "train", "--out", str(run), "--set", f"train.seed={seed}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    timing = {"seed": seed, "wall_s": time.perf_counter() - began, "load_before": load_before,
              "load_after": os.getloadavg()[0], "data_wait_fraction": mean_data_wait(run)}
    (run / "timing.json").write_text(json.dumps(timing))
    return timing


def mean_data_wait(run: Path) -> float:
    """The fraction of step time spent waiting for data, averaged over the logged steps."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    waits = [r["data_wait_fraction"] for r in rows if "data_wait_fraction" in r]
    return sum(waits) / len(waits)


def verdicts(stats: dict) -> list[dict]:
    out = []
    for metric, statistic, threshold, what in TARGETS:
        value = getattr(stats[metric], statistic)
        out.append({"metric": metric, "statistic": statistic, "target": threshold, "value": value,
                    "met": value >= threshold, "what": what})
    return out


def render(payload: dict) -> str:
    seeds = payload["stamp"]["seeds"]
    lines = ["# The default recipe over seeds", "",
             f"`vlalign train` with no flags, seeds {', '.join(map(str, seeds))}, one process each; held-out "
             "scenes rendered as the training ones are. Mean ± sample std (min-max).", "",
             "| target | value | goal | met |", "|---|---|---|---|"]
    for v in payload["verdicts"]:
        lines.append(f"| {v['what']} | {v['value']:.3f} | ≥ {v['target']:.2f} | {'yes' if v['met'] else 'no'} |")
    walls = [t["wall_s"] for t in payload["timing"]]
    quiet = min(payload["timing"], key=lambda t: t["load_before"])
    lines.append(f"| wall time of the quietest run here (load {quiet['load_before']:.1f} before it; the target is "
                 f"for an idle machine: default_recipe_timing.md) | {quiet['wall_s']:.0f} s | ≤ {TIME_TARGET_S:.0f} s | "
                 f"{'yes' if quiet['wall_s'] <= TIME_TARGET_S else 'no'} |")
    lines += ["", "| metric | mean ± std | min | max |", "|---|---|---|---|"]
    for metric in SHOWN:
        s = payload["metrics"].get(metric)
        if s:
            spread = "" if s["std"] is None else f" ± {s['std']:.3f}"
            lines.append(f"| {metric} | {s['mean']:.3f}{spread} | {s['min']:.3f} | {s['max']:.3f} |")
    lines += ["", "| seed | wall s | load before / after | data wait | shape+colour | small | compositional | t2i R@1 |",
              "|---|---|---|---|---|---|---|---|"]
    m = payload["metrics"]
    for t in payload["timing"]:
        key = f"seed-{t['seed']}"
        cells = [m[k]["values"][key] for k in ("zeroshot/shape+colour/top1", "zeroshot/shape+colour/top1_small",
                                               "compositional/shape+colour/top1", "retrieval/t2i_R@1")]
        lines.append(f"| {t['seed']} | {t['wall_s']:.0f} | {t['load_before']:.1f} / {t['load_after']:.1f} | "
                     f"{t['data_wait_fraction']:.1%} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    lines += ["", f"Wall time over all seeds: {min(walls):.0f}-{max(walls):.0f} s per run.", "",
              provenance.markdown(payload["stamp"]), ""]
    return "\n".join(lines)


def render_timing(payload: dict) -> str:
    lines = ["# The default recipe's wall time", "",
             "`vlalign train` with no flags, one process per seed, timed from start to exit (set-up, training, "
             "evaluation, report).", "", "| seed | wall s | goal | met | load before / after | data wait |",
             "|---|---|---|---|---|---|"]
    for t in payload["timing"]:
        met = "yes" if t["wall_s"] <= TIME_TARGET_S else "no"
        lines.append(f"| {t['seed']} | {t['wall_s']:.0f} | ≤ {TIME_TARGET_S:.0f} | {met} | "
                     f"{t['load_before']:.1f} / {t['load_after']:.1f} | {t['data_wait_fraction']:.1%} |")
    lines += ["", "The load average is a one-minute mean that lags: a value above 2 before a run says the "
              "machine was not quiet just before it.", "", provenance.markdown(payload["stamp"]), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-4", help="seeds to run, e.g. 0-4 or 0,2,5 (default 0-4)")
    parser.add_argument("--out", default="runs/default-recipe", help="where the seeds' run directories go")
    parser.add_argument("--results", default=str(RESULTS), help="directory for default_recipe.{json,md}")
    parser.add_argument("--timing", action="store_true",
                        help="time the runs only (on a quiet machine): writes default_recipe_timing.{json,md}")
    args = parser.parse_args()
    began = provenance.start()
    seeds = parse_seeds(args.seeds)
    out = Path(args.out)
    timing = []
    for seed in seeds:
        timing.append(run_seed(out, seed))
        print(f"seed {seed}: {timing[-1]['wall_s']:.0f} s", flush=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    if args.timing:
        payload = {"stamp": provenance.stamp(began, seeds=seeds), "timing": timing, "time_target_s": TIME_TARGET_S}
        (results / "default_recipe_timing.json").write_text(json.dumps(payload, indent=1) + "\n")
        (results / "default_recipe_timing.md").write_text(render_timing(payload))
        print(render_timing(payload))
        return 0
    stats = summarize([out / f"seed-{s}" for s in seeds]).metrics
    payload = {"stamp": provenance.stamp(began, seeds=seeds), "verdicts": verdicts(stats), "timing": timing,
               "time_target_s": TIME_TARGET_S, "metrics": {k: v.as_dict() for k, v in stats.items()}}
    (results / "default_recipe.json").write_text(json.dumps(payload, indent=1) + "\n")
    (results / "default_recipe.md").write_text(render(payload))
    print(render(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
