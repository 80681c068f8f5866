"""Give every results file written before stamps existed a stamp recovered from facts, with ``backfilled``
true: the commit that last wrote the JSON and its date (``git log -1 -- FILE``), the script that writes that
file name, and whatever the JSON itself recorded (a command, seeds, load averages, torch, threads); every other
fact is null. The markdown sibling gets the stamp's line at its end. No number of a results file changes;
files that already carry a stamp are left alone, so a second run does nothing.

    PYTHONPATH=src python benchmarks/backfill_stamps.py
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

from vlalign import provenance

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
# The keys under which results files written before stamps recorded a fact, searched at the top level of the
# JSON and then in its "machine" and "settings" objects.
RECORDED = {
    "seeds": ("seeds", "seed"),
    "load_start": ("load_average_start",),
    "load_end": ("loadavg_end", "load_average_end", "load_average_1min"),
    "torch": ("torch",),
    "python": ("python",),
    "cpu": ("cpu",),
    "threads": ("threads",),
}


def main() -> None:
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "stamp" in data:
            continue
        stamp = recovered_stamp(path, data)
        write_json(path, data, stamp)
        markdown = path.with_suffix(".md")
        if markdown.is_file():
            markdown.write_text(markdown.read_text().rstrip("\n") + "\n\n" + provenance.markdown(stamp) + "\n")
        print(f"{path.relative_to(ROOT)}: stamp from {stamp['commit']}")


def recovered_stamp(path: Path, data: dict | list) -> dict:
    """The stamp of ``path`` as far as git and the file's own keys tell; null for everything else."""
    commit = provenance.git(ROOT, "log", "-1", "--format=%H", "--", str(path.relative_to(ROOT)))
    if not commit:
        raise SystemExit(f"{path} has no commit: commit it before backfilling its stamp")
    stamp = dict.fromkeys(provenance.REQUIRED)
    stamp |= {"script": writer_script(path.stem), "commit": commit, "date": commit_date(commit)}
    if isinstance(data, dict):
        stamp |= {fact: value for fact, names in RECORDED.items() if (value := recorded(data, names)) is not None}
        stamp["command"] = recorded_command(data)
    stamp["seeds"] = seed_list(stamp["seeds"])
    stamp["load_end"] = one_minute(stamp["load_end"])
    return stamp | {"backfilled": True, "recovered_from": f"git log -1 -- {path.relative_to(ROOT)} and the "
                                                          "file's own keys"}


def writer_script(stem: str) -> str:
    """The benchmark script that writes ``results/<stem>.*``: the one of the same name, else the only one
    naming the file."""
    same = HERE / f"{stem}.py"
    if same.is_file():
        return same.relative_to(ROOT).as_posix()
    writers = [p for p in sorted(HERE.glob("*.py"))
               if p.name != Path(__file__).name and re.search(rf"\b{re.escape(stem)}\b", p.read_text())]
    if len(writers) != 1:
        raise SystemExit(f"no single benchmark script writes {stem}: {[p.name for p in writers]}")
    return writers[0].relative_to(ROOT).as_posix()


def commit_date(commit: str) -> str:
    """The committer date of ``commit`` in UTC, ISO 8601 (as ``provenance.utc_now``)."""
    when = datetime.datetime.fromisoformat(provenance.git(ROOT, "show", "-s", "--format=%cI", commit))
    return when.astimezone(datetime.timezone.utc).isoformat()


def recorded(data: dict, names: tuple[str, ...]):
    """The first of ``names`` the file recorded, at its top level or in its "machine" / "settings" objects."""
    for scope in (data, data.get("machine"), data.get("settings")):
        if isinstance(scope, dict):
            for name in names:
                if scope.get(name) is not None:
                    return scope[name]
    return None


def recorded_command(data: dict) -> str | None:
    """The command the file recorded, or the commands of the runs it merged ("; " between them)."""
    commands = [data["command"]] if "command" in data else [run["command"] for run in data.get("runs", [])]
    return "; ".join(commands) or None


def seed_list(seeds) -> list[int] | None:
    """A recorded seed or list of seeds as a list."""
    if seeds is None or isinstance(seeds, list):
        return seeds
    return [seeds]


def one_minute(load) -> float | None:
    """The 1-minute figure of a recorded load average (a number, or os.getloadavg()'s three)."""
    return load[0] if isinstance(load, list) else load


def write_json(path: Path, data: dict | list, stamp: dict) -> None:
    """``data`` with ``stamp`` first (a list becomes {"stamp", "rows"}), in the file's own JSON layout."""
    stamped = {"stamp": stamp} | (data if isinstance(data, dict) else {"rows": data})
    ending = "\n" if path.read_text().endswith("\n") else ""
    path.write_text(json.dumps(stamped, indent=1) + ending)


if __name__ == "__main__":
    main()
