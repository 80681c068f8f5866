"""Evaluation: tasks (zero-shot, retrieval, compositional, ...), ``eval.json`` and ``report.html``."""

from __future__ import annotations

import json
from pathlib import Path

from vlalign.api import Aligner, VisualAssistant

# Importing a task module registers its tasks.
from vlalign.eval import adversarial, fdt_codes, generative, hard_negatives, linear_probe, mir  # noqa: F401
from vlalign.eval import binding, grounding, regions, rerank  # noqa: F401
from vlalign.eval import teacher_forced  # noqa: F401  (issue 13)
from vlalign.eval import video  # noqa: F401
from vlalign.eval.report import write_report
from vlalign.eval.tasks import TASKS, TaskResult, run_tasks


def evaluate(model: Aligner | VisualAssistant, tasks: list[str], spec: str | None = None,
             write: bool = True) -> TaskResult:
    """Run ``tasks``; write ``eval.json`` and ``report.html`` into the model's run directory."""
    out = run_tasks(model, tasks, spec)
    if write:
        save_results(model, out)
    return out


def save_results(model: Aligner | VisualAssistant, out: TaskResult) -> None:
    """Merge ``out`` into the run's ``eval.json`` and rewrite ``report.html``."""
    path = model.run_dir / "eval.json"
    results = out.results
    if path.is_file():  # keep earlier results of other tasks/data; replace the ones just re-run
        rerun = {(r["task"], r.get("data")) for r in out.results}
        earlier = json.loads(path.read_text()).get("results", [])
        results = [r for r in earlier if (r["task"], r.get("data")) not in rerun] + out.results
    payload = {"run": str(model.run_dir), "step": model.step, "results": results}
    path.write_text(json.dumps(payload, indent=1))
    write_report(model.run_dir, results, out.figures)


__all__ = ["TASKS", "evaluate", "run_tasks", "save_results"]
