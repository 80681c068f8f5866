"""The catalogue's objectives and fusion items in one table: 12 items from the second seed list, each row read
from the committed results of catalogue_objectives, catalogue_more_objectives and catalogue_fusion against the CLIP
baseline of its own file. Trains nothing; writes benchmarks/results/catalogue_summary_objectives_fusion.{md,json}.

    PYTHONPATH=src python benchmarks/catalogue_summary_objectives_fusion.py

Every number comes from the three results JSON files; the paper's claims, the metrics each arm is judged on and
the baseline it is read against come from the ARMS of the three benchmark scripts (what writes their claim
columns). Each arm's config overrides are checked against ``vlalign.config`` (applied on the shapes-clip recipe, as
the benchmarks do) and each named recipe against ``vlalign.recipes``, so a renamed key fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import catalogue_fusion
import catalogue_more_objectives
import catalogue_objectives

from vlalign import provenance
from vlalign.config import apply_overrides
from vlalign.recipes import RECIPES, get_recipe

RESULTS = Path(__file__).parent / "results"
NAME = "catalogue_summary_objectives_fusion"
SOURCES = {  # results file -> the script whose ARMS hold its claims, focus metrics and baselines
    "catalogue_objectives": catalogue_objectives,
    "catalogue_more_objectives": catalogue_more_objectives,
    "catalogue_fusion": catalogue_fusion,
}
# (item, name in the issue, results file, arms). An arm without a row in the file shows as not measured.
ITEMS = (
    (1, "Wukong / FILIP (+ LiT)", "catalogue_objectives", ("filip", "lit-filip")),
    (2, "Prefix Conditioning / UniCL", "catalogue_objectives", ("unicl", "prefix")),
    (3, "Structured VL Concepts (negatives, paraphrases)", "catalogue_objectives",
     ("negatives", "negatives+paraphrases")),
    (4, "PTP", "catalogue_objectives", ("ptp", "ptp-concat")),
    (5, "FIBER (gated cross-attention, ITM with hard negatives, ITM re-ranking)", "catalogue_fusion",
     ("fiber", "fiber-random", "fiber-open", "fiber-init")),
    (6, "UNITER (image-conditioned MLM, ITM, WRA by optimal transport)", "catalogue_fusion", ("uniter",)),
    (7, "ManagerTower", "catalogue_fusion", ("manager", "manager-last")),
    (8, "GPT4Image", "catalogue_more_objectives", ("gpt4image",)),
    (9, "MeDSLIP", "catalogue_more_objectives", ("medslip", "medslip-proto")),
    (10, "VELVET-Med", "catalogue_more_objectives", ("velvet",)),
    (11, "PS3", "catalogue_more_objectives", ("ps3",)),
    (12, "LanguageBind", "catalogue_more_objectives", ("bind-edges", "bind-edges-scratch")),
)
# The CLI recipe that selects each component at the recipes' own (larger) budget; the benchmark rows use the
# overrides of the config column on micro towers.
CONTRASTIVE = ("t2i_R@1", "i2t_R@1")  # shown next to a focus the baseline row lacks (ManagerTower's ITM metrics)
RECIPE = {
    "filip": "shapes-filip", "lit-filip": "shapes-lit-filip", "unicl": "shapes-prefix", "prefix": "shapes-prefix",
    "ptp": "shapes-ptp", "fiber": "shapes-fiber", "fiber-random": "shapes-fiber", "fiber-open": "shapes-fiber",
    "fiber-init": "shapes-fiber", "uniter": "shapes-uniter", "manager": "shapes-manager",
    "manager-last": "shapes-manager", "gpt4image": "fashion-mnist-gpt4image", "medslip": "shapes-medslip",
    "medslip-proto": "shapes-medslip", "velvet": "shapes-velvet", "ps3": "shapes-ps3",
    "bind-edges": "shapes-bind-edges", "bind-edges-scratch": "shapes-bind-edges",
}


def load_results() -> dict[str, dict]:
    return {name: json.loads((RESULTS / f"{name}.json").read_text()) for name in SOURCES}


def check_config(arm: str, overrides: list[str], base: list[str]) -> None:
    """Raise if a key or value of the arm is not a real config (or its recipe not a real recipe)."""
    # The benchmarks point init_from at their own clip run; a stand-in path lets the init_modules check pass.
    starts_from_run = any(o.startswith("model.init_modules=") for o in overrides)
    stand_in = ["model.init_from=[runs/shapes-clip]"] if starts_from_run else []
    apply_overrides(get_recipe("shapes-clip"), [*base, *overrides, *stand_in], f"catalogue arm {arm!r}")
    if arm in RECIPE and RECIPE[arm] not in RECIPES:
        raise ValueError(f"recipe {RECIPE[arm]!r} of arm {arm!r} is not in vlalign.recipes; update RECIPE in this script")


def shorten(override: str, train: str, holdout: str) -> str:
    return override.replace(train, "<train>").replace(holdout, "<holdout>")


def config_cell(arm: str, overrides: list[str], train: str, holdout: str) -> str:
    last = {o.split("=", 1)[0]: o for o in overrides}  # a key set twice: the later value is the one that runs
    keys = " ".join(f"`{shorten(o, train, holdout)}`" for o in last.values()) or "(the base)"
    recipe = f"recipe `{RECIPE[arm]}`" if arm in RECIPE else "no recipe of its own (keys set on `shapes-clip`)"
    return f"{keys}; {recipe}"


def root_baseline(arms: dict, name: str) -> str:
    """Follow the script's baseline chain (lit-filip -> filip -> clip) to the arm's reference row."""
    while arms[name].baseline:
        name = arms[name].baseline
    return name


def fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in values.items())


def deltas(row: dict, base: dict, metrics: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {row[k] - base[k]:+.3f}" for k in metrics if k in row and k in base)


def fused_extras(row: dict) -> str:
    """ITM re-ranking against the row's own contrastive ranking, the ITM head's training accuracy, MLM's use of the
    image: what the fusion papers' claims are about beyond the contrastive embeddings."""
    parts = []
    if "i2t_R@1_itm" in row:
        gain = (row["i2t_R@1_itm"] + row["t2i_R@1_itm"] - row["i2t_R@1"] - row["t2i_R@1"]) / 2
        parts.append(f"ITM re-ranking vs its own ITC ranking: mean R@1 {gain:+.3f}; train ITM accuracy "
                     f"{row['train_itm_accuracy']:.3f} (2/3 = always 'no match')")
    if "mlm_true" in row:
        parts.append(f"MLM accuracy {row['mlm_true']:.3f} with the true image vs {row['mlm_shuffled']:.3f} shuffled")
    return "; ".join(parts)


def arm_label(row: dict, steps: int) -> str:
    return row["arm"] if row["steps"] == steps else f"{row['arm']} ({row['steps']} steps)"


def file_steps(data: dict) -> int:
    """The file's budget: its `steps`, or (fusion) the steps most of its rows ran."""
    steps = [r["steps"] for r in data["rows"]]
    return data.get("steps", max(set(steps), key=steps.count))


def summary_rows(results: dict[str, dict]) -> list[dict]:
    out = []
    for item, title, source, arm_names in ITEMS:
        data, script = results[source], SOURCES[source]
        arms = {a.name: a for a in script.ARMS}
        train = next(o.split("=", 1)[1] for o in data["base_overrides"] if o.startswith("data.train="))
        holdout = train.split("holdout=", 1)[1]
        steps = file_steps(data)
        for name in arm_names:
            rows = [r for r in data["rows"] if r["arm"] == name]
            overrides = data["arms"].get(name, list(arms[name].overrides))  # not yet run: the script's
            check_config(name, overrides, data["base_overrides"])
            common = {"item": item, "title": title, "arm": name, "source": source,
                      "config": config_cell(name, overrides, train, holdout), "overrides": overrides,
                      "recipe": RECIPE.get(name), "claim": arms[name].claim}
            if not rows:
                out.append(common | {"label": name, "steps": None, "measured": False})
            for row in rows:
                out.append(common | describe(row, arms, data["rows"], steps))
    return out


def describe(row: dict, arms: dict, rows: list[dict], steps: int) -> dict:
    """Baseline, headline metrics and the small-scale line of one measured row, all read from the rows."""
    arm = arms[row["arm"]]
    root = root_baseline(arms, row["arm"])
    base = next((r for r in rows if r["arm"] == root and r["steps"] == row["steps"]), None)
    focus = tuple(k for k in arm.focus if k in row)
    if base is not None and not any(k in base for k in focus):  # e.g. ITM-only focus: add what the baseline has
        focus = tuple(k for k in CONTRASTIVE if k in row and k in base) + focus
    partner = next((r for r in rows if r["arm"] == arm.baseline and r["steps"] == row["steps"]), None)
    shows = []
    if base is not None:
        shows.append(f"vs {root}: {deltas(row, base, focus)}")
    if partner is not None and arm.baseline != root:
        shows.append(f"vs {arm.baseline}: {deltas(row, partner, focus)}")
    if base is None and partner is None:
        shows.append(f"no baseline row at {row['steps']} steps in the file")
    if extras := fused_extras(row):
        shows.append(extras)
    return {
        "label": arm_label(row, steps), "steps": row["steps"], "measured": True,
        "baseline_arm": root if base is not None else None,
        "baseline": {k: base[k] for k in focus if k in base} if base is not None else None,
        "metrics": {k: row[k] for k in focus},
        "shows": "; ".join(shows),
    }


def budget_lines(results: dict[str, dict]) -> list[str]:
    """Each file's budget and whether the three files' CLIP rows are the same run."""
    lines = []
    for name, data in results.items():
        steps = sorted({r["steps"] for r in data["rows"]})
        lines.append(f"- `{name}`: steps per row {', '.join(map(str, steps))}, eval_n {data['eval_n']}, "
                     f"{len(data['base_overrides'])} base overrides (see [{name}.md]({name}.md) for its budget "
                     "paragraph).")
    bases = {tuple(d["base_overrides"]) for d in results.values()}
    lines.append("- Base overrides (towers, batch, data, schedule): "
                 + ("identical in the three files." if len(bases) == 1 else "DIFFER between the files; compare "
                    "only within a file."))
    clip = [{k: v for k, v in r.items() if k not in ("train_seconds", "eval_seconds")}
            for d in results.values() for r in d["rows"] if r["arm"] == "clip"]
    shared = set.intersection(*(set(c) for c in clip))
    same = all(c[k] == clip[0][k] for c in clip for k in shared)
    lines.append("- The clip rows of the three files " + (
        f"agree on every metric they share ({', '.join(sorted(shared - {'arm', 'steps'}))}): the same deterministic "
        "run, so baselines are comparable across files at the same steps."
        if same else "differ: read every arm only against the clip row of its own file."))
    return lines


def write(rows: list[dict], results: dict[str, dict], stamp: dict) -> None:
    lines = [
        "# Catalogue summary: objectives and fusion from the second seed list, against CLIP on the shapes world",
        "",
        (f"Generated by `PYTHONPATH=src python benchmarks/{NAME}.py` from the results JSON of "
         "[catalogue_objectives](catalogue_objectives.md), [catalogue_more_objectives](catalogue_more_objectives.md) "
         "and [catalogue_fusion](catalogue_fusion.md); nothing is trained here. Every arm is read against the "
         "baseline of its own file at its own steps: `clip` for shapes arms, `clip-edges` (CLIP trained on the same "
         "edge maps) for LanguageBind, a supervised ViT on Fashion-MNIST for GPT4Image. Where the benchmark reads "
         "an arm against an ablation partner (lit-filip vs filip, prefix vs unicl, fiber-* vs fiber, manager vs "
         "manager-last, paraphrases vs negatives) the line gives that difference too. Headline metrics are the ones "
         "the benchmark picked for the paper's claim; metric definitions are in the detailed files."),
        "",
        "Budgets:",
        "",
        *budget_lines(results),
        ("- Within a file the budgets still differ where the config column says so: unicl/prefix spend the same "
         "steps on the union of captions and class-name labels; the LanguageBind arms train on edge maps; "
         "GPT4Image and its baseline on Fashion-MNIST; lit-filip, fiber-init and the two LanguageBind arms start "
         "from weights of the clip arm (its steps come on top); fusion arms cost more per step (see the train "
         "seconds in catalogue_fusion.md)."),
        "",
        ("One seed, early training of micro towers: each detailed file states its seed-noise level (the fusion "
         "file's is much larger for ITC R@1 than the objective files'); read deltas below it as no effect. "
         "`<train>` is the file's base caption data, `<holdout>` its held-out colour-shape combinations."),
        "",
        ("| # | item | arm | config (benchmark overrides; CLI recipe) | baseline at the same budget | headline "
         "metrics | paper's claim | what small scale shows | details |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows):
        link = f"[{r['source']}.md]({r['source']}.md)"
        title = r["title"] if i == 0 or rows[i - 1]["item"] != r["item"] else "″"  # sub-rows: the item once
        if not r["measured"]:
            lines.append(f"| {r['item']} | {title} | {r['label']} | {r['config']} | – | – | {r['claim']} | "
                         f"not measured: no row in {r['source']}.json | {link} |")
            continue
        baseline = f"{r['baseline_arm']}: {fmt(r['baseline'])}" if r["baseline"] is not None else "–"
        lines.append(f"| {r['item']} | {title} | {r['label']} | {r['config']} | {baseline} | "
                     f"{fmt(r['metrics'])} | {r['claim']} | {r['shows']} | {link} |")
    sources = {f"{name}.json": data["stamp"] for name, data in results.items()}
    lines += ["", provenance.markdown_sources(sources), "", provenance.markdown(stamp)]
    (RESULTS / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{NAME}.json").write_text(json.dumps(
        {"stamp": stamp, "sources": list(SOURCES), "source_stamps": sources, "rows": rows}, indent=1))


def main() -> None:
    began = provenance.start()
    results = load_results()
    write(summary_rows(results), results, provenance.stamp(began, seeds=[]))  # trains nothing
    print(f"wrote {RESULTS / f'{NAME}.md'}")


if __name__ == "__main__":
    main()
