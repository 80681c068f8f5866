"""What a source holds, and what of it cannot be used: ``vlalign data inspect SPEC``."""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass, field

import numpy as np

from vlalign.data.sample import CorruptSample, Source, container_of
from vlalign.data.stats import ChannelStats
from vlalign.progress import progress as progress_bar

PERCENTILES = (5, 50, 95, 100)


@dataclass
class InspectReport:
    name: str
    samples: int  # in the source
    inspected: int  # samples read (all, or an evenly spaced ``limit`` of them)
    readable: int
    skipped: dict[str, int]  # reason -> count
    worst_sources: list[tuple[str, int]]  # the files or shards with most skips
    channel_names: list[str]
    dtypes: dict[str, int]
    sizes: dict[str, int]  # "HxW" -> count, most common first
    channel_mean: list[float]  # per channel, stored units
    channel_std: list[float]
    caption_words: dict[str, float]  # "p5", "p50", "p95", "max"
    caption_chars: dict[str, float]
    classes: list[str] | None
    label_counts: dict[str, int]
    notes: list[str] = field(default_factory=list)  # damaged or missing shards

    def as_dict(self) -> dict:
        return asdict(self)


def inspect_source(source: Source, limit: int | None = None, progress: bool = False) -> InspectReport:
    """Read ``source`` (or ``limit`` evenly spaced samples of it) and summarise it."""
    n = len(source)
    indices = range(n) if limit is None or limit >= n else np.linspace(0, n - 1, limit).astype(int).tolist()
    skipped, by_source = collections.Counter(), collections.Counter()
    dtypes, sizes, labels = collections.Counter(), collections.Counter(), collections.Counter()
    words, chars = [], []
    stats = ChannelStats(len(source.channel_names))
    for i in progress_bar(indices, desc="inspect", unit="sample", disable=not progress):
        try:
            sample = source[i]
            if not sample.caption or not sample.caption.strip():
                raise CorruptSample("empty-caption", sample.key)
        except CorruptSample as bad:
            skipped[bad.reason] += 1
            by_source[container_of(bad.source)] += 1
            continue
        dtypes[str(sample.image.dtype)] += 1
        sizes[f"{sample.image.shape[1]}x{sample.image.shape[2]}"] += 1
        if sample.image.shape[0] == len(stats.total):
            stats.add(sample.image)
        words.append(len(sample.caption.split()))
        chars.append(len(sample.caption))
        if sample.label is not None:
            labels[source.classes[sample.label] if source.classes else str(sample.label)] += 1
    notes = [f"damaged shard {path}: {what}" for path, what in getattr(source, "damaged", {}).items()]
    notes += [f"missing shard {path}" for path in getattr(source, "missing_shards", [])]
    return InspectReport(
        name=source.name, samples=n, inspected=len(indices), readable=len(words), skipped=dict(skipped.most_common()),
        worst_sources=by_source.most_common(5), channel_names=list(source.channel_names), dtypes=dict(dtypes),
        sizes=dict(sizes.most_common()), channel_mean=stats.mean, channel_std=stats.std,
        caption_words=_percentiles(words), caption_chars=_percentiles(chars), classes=source.classes,
        label_counts=dict(labels.most_common()), notes=notes)


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    points = np.percentile(np.asarray(values), PERCENTILES)
    return {("max" if p == 100 else f"p{p}"): float(v) for p, v in zip(PERCENTILES, points)}


def format_report(report: InspectReport) -> str:
    """The report as aligned text lines for a terminal."""
    def numbers(values: list[float]) -> str:
        return "  ".join(f"{v:.4g}" for v in values)

    def counts(mapping: dict, most: int = 8) -> str:
        items = list(mapping.items())
        text = ", ".join(f"{k} {v}" for k, v in items[:most])
        return text + (f", ... ({len(items) - most} more)" if len(items) > most else "") if items else "none"

    part = f" (an evenly spaced {report.inspected})" if report.inspected < report.samples else ""
    lines = [
        ("source", report.name),
        ("samples", f"{report.samples}{part}: {report.readable} readable, "
                    f"{report.inspected - report.readable} skipped"),
        ("skipped", counts(report.skipped)),
        ("worst", ", ".join(f"{s} ({c})" for s, c in report.worst_sources) or "none"),
        ("channels", f"{len(report.channel_names)}: {' '.join(report.channel_names)}  dtype {counts(report.dtypes)}"),
        ("mean", numbers(report.channel_mean)),
        ("std", numbers(report.channel_std)),
        ("sizes", counts(report.sizes, 5)),
        ("caption words", "  ".join(f"{k} {v:g}" for k, v in report.caption_words.items())),
        ("caption chars", "  ".join(f"{k} {v:g}" for k, v in report.caption_chars.items())),
    ]
    if report.classes:
        lines.append(("classes", f"{len(report.classes)}: {counts(report.label_counts, 10)}"))
    elif report.label_counts:
        lines.append(("labels", counts(report.label_counts, 10)))
    lines += [("note", note) for note in report.notes]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
