"""Mean, spread and range of eval metrics over several runs (seeds): ``aggregate`` does the arithmetic on
any ``{run: {metric: value}}`` table (benchmark scripts pass their own numbers), ``summarize`` reads it
from run directories' ``eval.json``.

A metric's name is its result's task, label set (if any) and key: ``zeroshot/colour/top1``,
``retrieval/t2i_R@1``. When one task and label set was evaluated on several data specs, the data spec
is appended (``retrieval/t2i_R@1@shapes:n=64,seed=1``). Counts of the evaluation itself (``n``, ...)
are not metrics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlalign.errors import VlalignError

NOT_METRICS = frozenset({"n", "unique_captions"})  # sizes of the evaluation, the same in every run


@dataclass(frozen=True)
class MetricStats:
    """One metric over n runs; ``std`` is the sample standard deviation (ddof=1), None below two runs."""

    mean: float
    std: float | None
    min: float
    max: float
    n: int
    values: dict[str, float]  # run label -> value

    def mean_std(self, digits: int = 3) -> str:
        """``0.912 ± 0.013`` (``0.912`` alone for one run)."""
        spread = "" if self.std is None else f" ± {self.std:.{digits}f}"
        return f"{self.mean:.{digits}f}{spread}"

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max, "n": self.n,
                "values": dict(self.values)}


def stats(values: Mapping[str, float]) -> MetricStats:
    """Statistics of one metric's ``{run label: value}``; needs at least one value."""
    if not values:
        raise ValueError("no values to aggregate")
    xs = [float(v) for v in values.values()]
    n = len(xs)
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return MetricStats(mean, std, min(xs), max(xs), n, {str(k): float(v) for k, v in values.items()})


def aggregate(per_run: Mapping[str, Mapping[str, float]]) -> dict[str, MetricStats]:
    """``{run label: {metric: value}}`` -> ``{metric: MetricStats}``, metrics in first-seen order. A metric
    missing from some runs is aggregated over the runs that have it (its ``n`` says how many)."""
    by_metric: dict[str, dict[str, float]] = {}
    for label, metrics in per_run.items():
        for name, value in metrics.items():
            by_metric.setdefault(name, {})[str(label)] = value
    return {name: stats(values) for name, values in by_metric.items()}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flatten_results(results: Sequence[dict]) -> dict[str, float]:
    """An ``eval.json`` results list -> ``{metric name: value}`` of its scalar metrics (see the module doc)."""
    groups: dict[str, set] = {}
    for r in results:
        groups.setdefault(_group(r), set()).add(r.get("data"))
    flat = {}
    for r in results:
        prefix = _group(r) + (f"@{r.get('data')}" if len(groups[_group(r)]) > 1 else "")
        for key, value in r.items():
            if key not in NOT_METRICS and _is_number(value):
                flat[f"{prefix}/{key}"] = float(value)
    return flat


def _group(result: dict) -> str:
    return "/".join(str(p) for p in (result["task"], result.get("labels")) if p)


@dataclass(frozen=True)
class Summary:
    """Metrics aggregated over runs; ``runs`` maps each run label to its directory."""

    runs: dict[str, Path]
    metrics: dict[str, MetricStats]

    def as_dict(self, relative_to: Path | None = None) -> dict:
        def where(path: Path) -> str:
            return str(path.relative_to(relative_to)) if relative_to and path.is_relative_to(relative_to) else str(path)

        return {"runs": {label: where(path) for label, path in self.runs.items()},
                "metrics": {name: s.as_dict() for name, s in self.metrics.items()}}


def read_eval(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "eval.json"
    try:
        return json.loads(path.read_text())["results"]
    except FileNotFoundError:
        raise VlalignError(f"{run_dir} has no eval.json: evaluate it first (`vlalign eval --checkpoint "
                           f"{run_dir}`).") from None
    except (ValueError, KeyError) as err:
        raise VlalignError(f"{path} is not an eval.json written by vlalign ({err}).") from None


def summarize(run_dirs: Sequence[str | Path] | Mapping[str, str | Path]) -> Summary:
    """Aggregate the scalar metrics of each run's ``eval.json``. A list is labelled by directory names, a
    mapping by its keys (``{"0": "out/seed-0", ...}``)."""
    if not isinstance(run_dirs, Mapping):
        run_dirs = {Path(d).name: d for d in run_dirs}
    if not run_dirs:
        raise VlalignError("No runs to summarize.")
    runs = {str(label): Path(d) for label, d in run_dirs.items()}
    return Summary(runs, aggregate({label: flatten_results(read_eval(d)) for label, d in runs.items()}))


def markdown_table(summary: Summary, digits: int = 4) -> str:
    """One row per metric: mean, std, min, max, n and each run's value."""
    labels = list(summary.runs)

    def num(x: float | None) -> str:
        return "–" if x is None else f"{x:.{digits}f}"

    lines = ["| metric | mean | std | min | max | n | " + " | ".join(labels) + " |",
             "|---|" + "---:|" * (5 + len(labels))]
    for name, s in summary.metrics.items():
        cells = [num(s.mean), num(s.std), num(s.min), num(s.max), str(s.n)] + [num(s.values.get(x)) for x in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
