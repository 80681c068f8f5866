"""Every published number carries its provenance: each benchmarks/results/*.md has a JSON sibling whose stamp
names the commit, command, seeds and machine (``vlalign.provenance``), the markdown names that commit, and the
script that wrote it is in the repository. Null facts are allowed only in a stamp recovered from git history."""

from __future__ import annotations

import json
from pathlib import Path

from vlalign import provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def problems(results: Path, root: Path) -> list[str]:
    """What is wrong with the provenance of the results files in ``results``, one line per problem."""
    found = [f"{md.name}: no {md.stem}.json beside it" for md in sorted(results.glob("*.md"))
             if not md.with_suffix(".json").is_file()]
    for path in sorted(results.glob("*.json")):
        found += stamp_problems(path, root)
    return found


def stamp_problems(path: Path, root: Path) -> list[str]:
    data = json.loads(path.read_text())
    stamp = data.get("stamp") if isinstance(data, dict) else None
    if not isinstance(stamp, dict):
        return [f"{path.name}: no stamp"]
    found = [f"{path.name}: stamp lacks {key}" for key in provenance.REQUIRED if key not in stamp]
    if not stamp.get("backfilled"):
        found += [f"{path.name}: {key} is null in a stamp not backfilled" for key in provenance.REQUIRED
                  if key in stamp and stamp[key] is None]
    if not stamp.get("commit"):
        found.append(f"{path.name}: no commit")
    if not stamp.get("script") or not (root / stamp["script"]).is_file():
        found.append(f"{path.name}: the script {stamp.get('script')!r} is not in the repository")
    markdown = path.with_suffix(".md")
    if stamp.get("commit") and markdown.is_file() and stamp["commit"] not in markdown.read_text():
        found.append(f"{markdown.name}: does not name the commit {stamp['commit']}")
    return found


def test_every_results_file_carries_its_provenance() -> None:
    assert problems(RESULTS, ROOT) == []


def full_stamp(**changes) -> dict:
    stamp = {key: "x" for key in provenance.REQUIRED} | {"script": "bench.py", "commit": "c0ffee", "seeds": [0]}
    return stamp | {"backfilled": False} | changes


def write(folder: Path, stem: str, data: dict | list | None, markdown: str | None) -> None:
    if data is not None:
        (folder / f"{stem}.json").write_text(json.dumps(data))
    if markdown is not None:
        (folder / f"{stem}.md").write_text(markdown)


def test_a_stamped_pair_passes(tmp_path: Path) -> None:
    (tmp_path / "bench.py").write_text("")
    write(tmp_path, "bench", {"stamp": full_stamp(), "rows": []}, "table\n\nProvenance: commit `c0ffee`.\n")
    assert problems(tmp_path, tmp_path) == []


def test_markdown_without_json_fails(tmp_path: Path) -> None:
    write(tmp_path, "hand_written", None, "# numbers typed in\n")
    assert problems(tmp_path, tmp_path) == ["hand_written.md: no hand_written.json beside it"]


def test_json_without_stamp_fails(tmp_path: Path) -> None:
    write(tmp_path, "old", {"rows": []}, "c0ffee\n")
    write(tmp_path, "older", [{"top1": 0.5}], "c0ffee\n")
    assert problems(tmp_path, tmp_path) == ["old.json: no stamp", "older.json: no stamp"]


def test_missing_key_null_fact_unnamed_commit_and_absent_script_fail(tmp_path: Path) -> None:
    stamp = full_stamp(script="gone.py", seeds=None)
    del stamp["torch"]
    write(tmp_path, "bench", {"stamp": stamp}, "no commit named here\n")
    assert problems(tmp_path, tmp_path) == [
        "bench.json: stamp lacks torch", "bench.json: seeds is null in a stamp not backfilled",
        "bench.json: the script 'gone.py' is not in the repository", "bench.md: does not name the commit c0ffee"]


def test_null_facts_pass_only_when_backfilled(tmp_path: Path) -> None:
    (tmp_path / "bench.py").write_text("")
    stamp = full_stamp(seeds=None, load_start=None, cpu=None, backfilled=True)
    write(tmp_path, "bench", {"stamp": stamp}, "Provenance (stamp recovered from git history): commit `c0ffee`.\n")
    assert problems(tmp_path, tmp_path) == []
