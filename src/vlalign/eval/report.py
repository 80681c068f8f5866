"""``report.html``: one self-contained page (images inline) with the training curves, a summary
table of every eval result and the task figures; the PNGs are also written to ``plots/``."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from vlalign.eval import plots

SUMMARY_KEYS = ("top1", "top5", "mean_per_class_recall", "i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5", "t2i_R@10",
                "mean", "accuracy", "attribute_recall", "attribute_precision", "cos_related", "cos_unrelated",
                "cos_gap", "macro_accuracy", "clean_t2i_R@1", "attacked_t2i_R@1", "clean_zeroshot_top1",
                "attacked_zeroshot_top1", "mir")


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary_rows(results: list[dict]) -> list[tuple[str, str, str]]:
    """(task, labels/data, 'metric=value, ...') rows for the terminal and the page."""
    rows = []
    for r in results:
        what = r.get("labels") or r.get("data", "")
        shown = ", ".join(f"{k}={r[k]:.3f}" for k in SUMMARY_KEYS if isinstance(r.get(k), (int, float)))
        rows.append((r["task"], str(what), shown))
    return rows


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _precisions(records: list[dict]) -> str:
    """", precision bf16" (or "fp32, bf16" where a resume on another machine changed it); "" for older logs."""
    seen = list(dict.fromkeys(r["precision"] for r in records if "precision" in r))  # in order of first use
    return f", precision {', '.join(seen)}" if seen else ""


def write_report(run_dir: str | Path, results: list[dict], figures: dict[str, bytes]) -> Path:
    run_dir = Path(run_dir)
    plot_dir = run_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    records = read_metrics(run_dir)
    new_figures = ({"training curves": plots.training_curves(records)} if records else {}) | figures
    titles = {}
    for title, png in new_figures.items():
        (plot_dir / f"{_slug(title)}.png").write_bytes(png)
        titles[_slug(title)] = title
    # Figures of earlier `vlalign eval` calls stay in the report, after the training curves.
    files = sorted(plot_dir.glob("*.png"), key=lambda f: (f.stem != "training-curves", f.stem))
    sections = []
    for png_file in files:
        title = titles.get(png_file.stem, png_file.stem.replace("-", " "))
        data = base64.b64encode(png_file.read_bytes()).decode()
        sections.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    table = "".join(f"<tr><td>{html.escape(t)}</td><td>{html.escape(w)}</td><td>{html.escape(m)}</td></tr>"
                    for t, w, m in summary_rows(results))
    last = records[-1] if records else {}
    facts = "no training log"
    if records:
        facts = (f"{last.get('step', 0)} steps, final loss {last.get('loss', float('nan')):.4f}, "
                 f"{last.get('samples_seen', 0)} samples seen{_precisions(records)}")
    body = f"""<p>{html.escape(facts)}</p>
<h2>Results</h2><table><tr><th>task</th><th>labels / data</th><th>metrics</th></tr>{table}</table>
{''.join(sections)}
<h2>Raw results</h2><pre>{html.escape(json.dumps(results, indent=1))}</pre>"""
    out = run_dir / "report.html"
    out.write_text(html_page(f"vlalign report: {run_dir.name}", body))
    return out


def html_page(title: str, body: str) -> str:
    """The report pages' frame: ``title`` (plain text) as title and heading, then ``body`` (HTML)."""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#1a202c}}
table{{border-collapse:collapse}}td,th{{border:1px solid #cbd5e0;padding:4px 10px;text-align:left}}
img{{max-width:100%;border:1px solid #e2e8f0}}</style></head><body>
<h1>{html.escape(title)}</h1>{body}</body></html>"""


def write_sweep_report(out: str | Path, summary, title: str = "") -> Path:
    """``out/report.html`` for runs that differ only in their seed: every metric's mean, std, min, max and
    per-run values (a ``vlalign.eval.aggregate.Summary``), and a link to each run's own report."""
    out = Path(out)

    def num(x: float | None) -> str:
        return "–" if x is None else f"{x:.4f}"

    def link(path: Path) -> str:
        report = path / "report.html"
        target = report.relative_to(out) if report.is_relative_to(out) else report.resolve()
        return f"<a href='{html.escape(target.as_posix())}'>{html.escape(path.name)}</a>"

    labels = list(summary.runs)
    head = "".join(f"<th>{html.escape(x)}</th>" for x in ["metric", "mean", "std", "min", "max", "n", *labels])
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(
            f"<td>{c}</td>" for c in [num(s.mean), num(s.std), num(s.min), num(s.max), s.n]
            + [num(s.values.get(x)) for x in labels]) + "</tr>"
        for name, s in summary.metrics.items())
    runs = "".join(f"<li>{html.escape(label)}: {link(path)}</li>" for label, path in summary.runs.items())
    body = (f"<p>{len(labels)} runs; std is the sample standard deviation (n - 1).</p>"
            f"<h2>Results over runs</h2><table><tr>{head}</tr>{rows}</table>"
            f"<h2>Runs</h2><ul>{runs}</ul>")
    path = out / "report.html"
    path.write_text(html_page(title or f"vlalign seed sweep: {out.name}", body))
    return path
