"""Evaluation: tasks (zero-shot, retrieval, compositional, ...), ``eval.json`` and ``report.html``."""

from __future__ import annotations

import json
from pathlib import Path

from vlalign.api import Aligner, VisualAssistant
from vlalign.eval import generative as _generative  # noqa: F401  (registers the generative tasks)
from vlalign.eval.report import write_report
from vlalign.eval.tasks import TASKS, TaskResult, run_tasks


def evaluate(model: Aligner | VisualAssistant, tasks: list[str], spec: str | None = None, write: bool = True) -> TaskResult:
    """Run ``tasks``; write ``eval.json`` and ``report.html`` into the model's run directory."""
    out = run_tasks(model, tasks, spec)
    if write:
        payload = {"run": str(model.run_dir), "step": model.step, "results": out.results}
        (model.run_dir / "eval.json").write_text(json.dumps(payload, indent=1))
        write_report(model.run_dir, out.results, out.figures)
    return out


__all__ = ["TASKS", "evaluate", "run_tasks"]
