"""``vlalign eval`` over one or several models in one call: vlalign runs, exports, ``hf-clip:DIR`` and
``open-clip:FILE,...`` checkpoints (``vlalign.pretrained``) alike. Each model runs every task asked for (or
its own ``eval.tasks``); a task that does not apply to a model (its data, its architecture) is skipped with
the reason instead of ending the call. One table, a row per model and task, compares them. A vlalign run keeps
its results in ``eval.json`` and ``report.html`` as a single-run eval does; other directories are not written to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.errors import DataError
from vlalign.eval.report import summary_rows
from vlalign.eval.tasks import TASKS, TaskResult, run_tasks

HEADER = ("model", "task", "labels / data", "metrics")


@dataclass
class ModelResults:
    name: str  # as the caller named the model
    results: list[dict]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (task, why it does not apply)

    def rows(self) -> list[dict]:
        """Every result and skip as one JSON-able row, each with the model's name."""
        skips = [{"task": task, "skipped": why} for task, why in self.skipped]
        return [{"model": self.name, **row} for row in self.results + skips]


def evaluate_models(names: list[str], tasks: list[str] | None, spec: str | None = None) -> list[ModelResults]:
    from vlalign.api import load
    from vlalign.eval import save_results

    unknown = [t for t in tasks or [] if t not in TASKS]
    if unknown:
        raise DataError(f"Unknown eval task '{unknown[0]}'. Known tasks: {', '.join(sorted(TASKS))}.")
    out = []
    for name in names:
        model = load(name)
        combined, skipped = TaskResult([]), []
        for task in tasks or model.config.eval.tasks:
            try:
                one = run_tasks(model, [task], spec)
            except DataError as err:
                skipped.append((task, str(err)))
                continue
            combined.results += one.results
            combined.figures |= one.figures
            skipped += [tuple(line.split(": ", 1)) for line in one.skipped]  # "task: why"
        if combined.results and (model.run_dir / "config.yaml").is_file():
            save_results(model, combined)
        out.append(ModelResults(name, combined.results, skipped))
    return out


def table(models: list[ModelResults]) -> str:
    """The comparison as aligned text columns (``HEADER``)."""
    rows = []
    for m in models:
        rows += [(m.name, *row) for row in summary_rows(m.results)]
        rows += [(m.name, task, "skipped", why) for task, why in m.skipped]
    widths = [max(len(r[i]) for r in rows + [HEADER]) for i in range(len(HEADER))]
    rule = "  ".join("-" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(HEADER, widths)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + [rule])
