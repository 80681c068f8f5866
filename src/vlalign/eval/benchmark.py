"""``vlalign benchmark``: a named suite of (task, data) entries run on one model, written as one table
(``benchmark-<suite>.md`` / ``.json`` and a ``benchmark-<suite>.html`` page in the run directory).

Reruns are cheap: finished entries are kept in ``benchmark/<suite>.json`` and skipped while the
checkpoint step is unchanged, and text embeddings (class prompts, captions) are cached in memory
across tasks and on disk in ``benchmark/text-embeddings.pt``. Entries whose task is not registered
or whose data is not installed are listed as skipped with the reason.
"""

from __future__ import annotations

import dataclasses
import html
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from vlalign.api import Aligner
from vlalign.errors import DataError, VlalignError
from vlalign.eval.tasks import TASKS, TaskResult, run_tasks

SHAPES_SUITE = [("zeroshot", None), ("retrieval", None), ("compositional", None), ("compositional-negatives", None),
                ("linear-probe", None)]
SUITES: dict[str, list[tuple[str, str | None]]] = {
    "shapes": SHAPES_SUITE,
    "full": SHAPES_SUITE + [("zeroshot", "fashion-mnist:test"), ("linear-probe", "fashion-mnist:test"),
                            ("retrieval", "openmoji:test"), ("channels", None), ("adversarial", None), ("mir", None)],
}
# The columns a task's row shows (others stay in the JSON); tasks not listed show their first few numbers.
HEADLINE = {
    "zeroshot": ("top1", "mean_per_class_recall"),
    "compositional": ("top1", "mean_per_class_recall"),
    "linear-probe": ("top1", "mean_per_class_recall", "weight_decay"),
    "retrieval": ("i2t_R@1", "t2i_R@1", "t2i_R@5", "i2t_mean_rank", "t2i_median_rank"),
    "compositional-negatives": ("accuracy", "swap-attribute", "replace-attribute", "replace-object",
                                "swap-relation", "swap-order"),
    "adversarial": ("clean_t2i_R@1", "attacked_t2i_R@1", "clean_zeroshot_top1", "attacked_zeroshot_top1"),
    "mir": ("mir", "fd_sum"),
}
VARIANT_KEYS = ("labels", "shots", "budget", "channels", "variant")


class CachingAligner(Aligner):
    """An ``Aligner`` that embeds each distinct text once (embeddings depend only on the checkpoint)."""

    text_cache: dict[str, torch.Tensor]

    @classmethod
    def wrap(cls, model: Aligner, cache: dict[str, torch.Tensor]) -> CachingAligner:
        out = cls(**{f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.init})
        out.int8, out.text_cache = model.int8, cache
        return out

    def encode_text(self, texts: str | Sequence[str], batch_size: int = 512) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else texts
        missing = list(dict.fromkeys(t for t in texts if t not in self.text_cache))
        if missing:
            for text, embed in zip(missing, super().encode_text(missing, batch_size)):
                self.text_cache[text] = embed.clone()
        if not texts:
            return super().encode_text(texts, batch_size)
        return torch.stack([self.text_cache[t] for t in texts])


def _entry_key(task: str, data: str | None) -> str:
    return f"{task}|{data or 'default'}"


def _load_json(path: Path, step: int) -> dict:
    if path.is_file():
        state = json.loads(path.read_text())
        if state.get("step") == step:
            return state
    return {"step": step, "entries": {}}


def run_benchmark(model: Aligner, suite: str = "shapes", force: bool = False, log=print) -> dict:
    """Run every entry of ``suite`` not already finished for this checkpoint; returns the table dict."""
    if suite not in SUITES:
        raise VlalignError(f"Unknown benchmark suite '{suite}'. Known suites: {', '.join(sorted(SUITES))}.")
    bench_dir = model.run_dir / "benchmark"
    bench_dir.mkdir(exist_ok=True)
    state_path, cache_path = bench_dir / f"{suite}.json", bench_dir / "text-embeddings.pt"
    state = {"step": model.step, "entries": {}} if force else _load_json(state_path, model.step)
    cached = torch.load(cache_path) if cache_path.is_file() and not force else {}
    cache = cached.get("texts", {}) if cached.get("step") == model.step else {}
    aligner = CachingAligner.wrap(model, cache)
    fresh = TaskResult([])
    for task_name, data in SUITES[suite]:
        key = _entry_key(task_name, data)
        if key in state["entries"] and "results" in state["entries"][key]:
            log(f"{key}: done earlier, skipped")
            continue
        if task_name not in TASKS:
            state["entries"][key] = {"skipped": f"task '{task_name}' is not available in this vlalign"}
            log(f"{key}: skipped (no such task)")
            continue
        start = time.perf_counter()
        try:
            out = run_tasks(aligner, [task_name], data)
        except DataError as err:  # a dataset that is not installed, or a task that does not apply to this run
            state["entries"][key] = {"skipped": str(err)}
            log(f"{key}: skipped ({err})")
            continue
        if out.skipped and not out.results:  # a task that does not apply to this run's data
            state["entries"][key] = {"skipped": out.skipped[0]}
            log(f"{key}: {out.skipped[0]}")
            continue
        seconds = time.perf_counter() - start
        state["entries"][key] = {"results": out.results, "seconds": round(seconds, 2)}
        fresh.results += out.results
        fresh.figures |= {(f"{data}: {title}" if data else title): png for title, png in out.figures.items()}
        log(f"{key}: {seconds:.1f} s")
        state_path.write_text(json.dumps(state, indent=1))  # a crash later keeps the finished entries
        torch.save({"step": model.step, "texts": cache}, cache_path)
    state_path.write_text(json.dumps(state, indent=1))
    table = benchmark_table(suite, state)
    write_table(model.run_dir, table)
    return {"table": table, "fresh": fresh}


def _variant(result: dict) -> str:
    return ", ".join(f"{k}={result[k]}" for k in VARIANT_KEYS if k in result)


def _metrics(result: dict) -> dict[str, float]:
    numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    keys = HEADLINE.get(result["task"]) or [k for k in numbers if k not in ("n",) + VARIANT_KEYS][:4]
    return {k: numbers[k] for k in keys if k in numbers}


def benchmark_table(suite: str, state: dict) -> dict:
    """One row per result (task, data, variant, headline metrics), then the skipped entries."""
    rows, skipped = [], []
    for key, entry in state["entries"].items():
        if "skipped" in entry:
            skipped.append({"entry": key, "reason": entry["skipped"]})
            continue
        for r in entry["results"]:
            rows.append({"task": r["task"], "data": r.get("data", ""), "variant": _variant(r), "metrics": _metrics(r)})
    return {"suite": suite, "step": state["step"], "rows": rows, "skipped": skipped}


def table_markdown(table: dict) -> str:
    lines = [f"# vlalign benchmark: suite `{table['suite']}`, step {table['step']}", "",
             "| task | data | variant | metrics |", "|---|---|---|---|"]
    for row in table["rows"]:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in row["metrics"].items())
        lines.append(f"| {row['task']} | {row['data']} | {row['variant']} | {shown} |")
    if table["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {s['entry']}: {s['reason']}" for s in table["skipped"]]
    return "\n".join(lines) + "\n"


def write_table(run_dir: Path, table: dict) -> None:
    """``benchmark-<suite>.md``, ``.json`` and a self-contained ``.html`` page in the run directory."""
    stem = run_dir / f"benchmark-{table['suite']}"
    markdown = table_markdown(table)
    stem.with_suffix(".md").write_text(markdown)
    stem.with_suffix(".json").write_text(json.dumps(table, indent=1))
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            row["task"], row["data"], row["variant"], ", ".join(f"{k}={v:.4g}" for k, v in row["metrics"].items())))
        + "</tr>" for row in table["rows"])
    skipped = "".join(f"<li>{html.escape(s['entry'])}: {html.escape(s['reason'])}</li>" for s in table["skipped"])
    stem.with_suffix(".html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>benchmark {html.escape(table['suite'])}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #cbd5e0;padding:4px 10px;text-align:left}</style></head><body>"
        f"<h1>vlalign benchmark: {html.escape(table['suite'])} (step {table['step']})</h1>"
        f"<table><tr><th>task</th><th>data</th><th>variant</th><th>metrics</th></tr>{cells}</table>"
        + (f"<h2>Skipped</h2><ul>{skipped}</ul>" if skipped else "") + "</body></html>")
