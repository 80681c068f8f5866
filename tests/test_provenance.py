"""The provenance stamp: what it records about the code, the command and the machine, and its markdown line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vlalign import provenance


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one committed benchmark script and a committed results file."""
    git(tmp_path, "init", "-q")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "bench.py").write_text("print(1)\n")
    (tmp_path / "benchmarks" / "results" / "bench.md").write_text("old\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def argv(repo: Path, *args: str) -> list[str]:
    return [str(repo / "benchmarks" / "bench.py"), *args]


def test_start_records_commit_script_and_quoted_command(repo: Path) -> None:
    began = provenance.start(argv(repo, "--seeds", "0", "1", "--set", "data.train=shapes:n=10 x"))
    assert began["commit"] == git(repo, "rev-parse", "HEAD")
    assert began["script"] == "benchmarks/bench.py"
    assert began["command"] == "python benchmarks/bench.py --seeds 0 1 --set 'data.train=shapes:n=10 x'"
    assert began["dirty"] is False


def test_dirty_for_code_changes_not_for_results(repo: Path) -> None:
    (repo / "benchmarks" / "results" / "bench.md").write_text("new numbers\n")
    assert provenance.start(argv(repo))["dirty"] is False
    (repo / "benchmarks" / "bench.py").write_text("print(2)\n")
    assert provenance.start(argv(repo))["dirty"] is True


def test_untracked_script_is_dirty(repo: Path) -> None:
    (repo / "benchmarks" / "other.py").write_text("")
    assert provenance.start(argv(repo))["dirty"] is True


def test_stamp_has_every_required_fact(repo: Path) -> None:
    stamp = provenance.stamp(provenance.start(argv(repo)), seeds=[3, 4], threads=1)
    assert all(stamp[key] is not None for key in provenance.REQUIRED)
    assert stamp["seeds"] == [3, 4] and stamp["threads"] == 1 and stamp["backfilled"] is False
    assert stamp["date"].endswith("+00:00")
    assert isinstance(stamp["isa"], list)


def test_outside_git_commit_and_dirty_are_unknown(tmp_path: Path) -> None:
    script = tmp_path / "bench.py"
    script.write_text("")
    began = provenance.start([str(script)])
    assert began["commit"] is None and began["dirty"] is None


def test_markdown_names_commit_command_seeds_and_changes(repo: Path) -> None:
    (repo / "benchmarks" / "bench.py").write_text("print(2)\n")
    stamp = provenance.stamp(provenance.start(argv(repo, "--quick")), seeds=[0, 1])
    line = provenance.markdown(stamp)
    assert "\n" not in line
    assert stamp["commit"] in line and "uncommitted changes" in line
    assert "`python benchmarks/bench.py --quick`" in line and "seeds 0, 1" in line


def test_markdown_of_backfilled_stamp_says_what_is_missing() -> None:
    stamp = {"script": "benchmarks/bench.py", "command": None, "commit": "a" * 40, "dirty": None,
             "date": "2024-01-01T00:00:00+00:00", "seeds": None, "load_start": None, "load_end": 2.5,
             "torch": None, "python": None, "cpu": None, "isa": None, "threads": None, "backfilled": True}
    line = provenance.markdown(stamp)
    assert "recovered from git history" in line
    assert "written by `benchmarks/bench.py`" in line and "a" * 40 in line
    assert "not recorded: command, dirty, seeds, load_start, torch" in line
    assert "load average ? → 2.50" in line


def test_with_earlier_lists_the_distinct_stamps_of_kept_rows() -> None:
    oldest = {"commit": "1", "date": "d1"}
    older = {"commit": "2", "date": "d2", "earlier": [oldest]}
    current = {"commit": "3", "date": "d3"}
    stamped = provenance.with_earlier(current, [older, oldest, current])
    assert stamped["earlier"] == [{"commit": "2", "date": "d2"}, oldest]
    assert "`2` (d2), `1` (d1)" in provenance.markdown(stamped)
    assert provenance.with_earlier(current, []) == current


def test_markdown_sources_names_each_file_and_commit() -> None:
    stamps = {"a.json": {"commit": "1" * 40, "date": "d1"}, "b.json": {"commit": "2", "date": "d2"}}
    line = provenance.markdown_sources(stamps)
    assert line == f"Numbers read from `a.json` (commit `{'1' * 40}`, d1), `b.json` (commit `2`, d2)."


def test_of_sections_names_the_runs_of_the_kept_sections() -> None:
    before, first, current = {"commit": "0"}, {"commit": "1"}, {"commit": "2"}
    stamp = provenance.of_sections(current, ["a", "b", "c"], {"a": first, "b": current}, before)
    assert stamp["commit"] == "2" and stamp["earlier"] == [first, before]
    assert provenance.of_sections(current, ["b"], {"b": current}, None) == current
