"""Provenance stamps for published numbers: which code, command, seeds and machine produced a result.

    began = provenance.start()                       # as the run begins: commit, command, date, load
    ...                                              # the measurement
    payload = {"stamp": provenance.stamp(began, seeds=[0, 1]), ...}
    markdown = body + "\n" + provenance.markdown(payload["stamp"]) + "\n"

Every file in ``benchmarks/results/`` carries such a stamp (``tests/test_results_provenance.py``). A
stamp recovered later from git history (``benchmarks/backfill_stamps.py``) has ``backfilled`` true and
null for each fact that was not recorded at the time.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

# Every stamp has these keys; null values are allowed only in a backfilled stamp.
REQUIRED = ("script", "command", "commit", "dirty", "date", "seeds", "load_start", "load_end", "torch", "python",
            "cpu", "isa", "threads")
ISA_PREFIXES = ("avx", "amx", "fma", "f16c")  # the /proc/cpuinfo flags that decide which kernels torch can run
HALF_FLAGS = ("bf16", "fp16")  # named in the markdown line: they decide whether bf16 can be fast
RESULTS_DIR = "benchmarks/results"  # changes here do not make the code dirty: results are written by the run
LINE_PREFIX = "Provenance"


def start(argv: list[str] | None = None) -> dict:
    """The facts fixed as a run begins: its script, command, commit (and uncommitted changes), date and load."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    repo = repo_root(script.parent if script.is_file() else Path.cwd())
    return {"script": relative_path(script, repo), "command": command(argv, repo),
            "commit": git(repo, "rev-parse", "HEAD"), "dirty": has_uncommitted_changes(repo),
            "date": utc_now(), "load_start": load_average()}


def stamp(began: dict, seeds: list[int], threads: int | None = None) -> dict:
    """The full stamp at the end of a run that ``start()`` began; ``seeds`` the seeds it used ([] for none),
    ``threads`` the torch threads of the measured work when that is not this process's count."""
    return {**began, "seeds": list(seeds), "load_end": load_average(), "torch": torch.__version__,
            "python": platform.python_version(), "cpu": cpu_model(), "isa": isa_flags(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": threads or torch.get_num_threads(), "cpus": os.cpu_count(), "backfilled": False}


def with_earlier(current: dict, kept: list[dict]) -> dict:
    """``current`` with, under ``earlier``, the distinct stamps (theirs and their own earlier ones) of the
    runs whose rows a results file keeps next to this run's."""
    earlier: list[dict] = []
    for older in kept:
        for one in (older, *older.get("earlier", [])):
            one = {k: v for k, v in one.items() if k != "earlier"}
            if one != current and one not in earlier:
                earlier.append(one)
    return {**current, "earlier": earlier} if earlier else current


def of_sections(current: dict, sections: list[str], stamps: dict[str, dict], before: dict | None) -> dict:
    """The stamp of a results file whose sections were run at different times: ``current`` (this run's) with
    each section's stamp (``stamps[name]``, else ``before``, the file's stamp before this run) as earlier ones."""
    kept = [stamps.get(name, before) for name in sections]
    return with_earlier(current, [s for s in kept if s])


def markdown(stamp: dict) -> str:
    """One paragraph naming the stamp's facts; a backfilled stamp says it was recovered and what is missing."""
    lead = (f"{LINE_PREFIX} (stamp recovered from git history; what is not named here was not recorded):"
            if stamp.get("backfilled") else f"{LINE_PREFIX}:")
    facts = [fact for fact in (_command(stamp), _commit(stamp), _seeds(stamp), _date(stamp), _load(stamp),
                               _software(stamp), _machine(stamp)) if fact]
    missing = [key for key in REQUIRED if stamp.get(key) is None]
    if missing:
        facts.append("not recorded: " + ", ".join(missing))
    earlier = [f"`{e['commit']}` ({e['date']})" for e in stamp.get("earlier", [])]
    if earlier:
        facts.append("rows kept from earlier runs at " + ", ".join(earlier))
    return f"{lead} " + "; ".join(facts) + "."


def markdown_sources(stamps: dict[str, dict]) -> str:
    """One line naming the results files a summary reads (file name -> that file's stamp) and their commits."""
    return "Numbers read from " + ", ".join(f"`{name}` (commit `{s['commit']}`, {s['date']})"
                                            for name, s in stamps.items()) + "."


def _command(stamp: dict) -> str:
    if stamp.get("command"):
        return f"`{stamp['command']}`"
    return f"written by `{stamp['script']}`" if stamp.get("script") else ""


def _commit(stamp: dict) -> str:
    if not stamp.get("commit"):
        return ""
    dirty = " with uncommitted changes" if stamp.get("dirty") else ""
    return f"commit `{stamp['commit']}`{dirty}"


def _seeds(stamp: dict) -> str:
    seeds = stamp.get("seeds")
    if seeds is None:
        return ""
    return "seeds " + ", ".join(map(str, seeds)) if seeds else "no seeds"


def _date(stamp: dict) -> str:
    return stamp.get("date") or ""


def _load(stamp: dict) -> str:
    start, end = stamp.get("load_start"), stamp.get("load_end")
    if start is None and end is None:
        return ""
    return "load average " + " → ".join("?" if x is None else f"{x:.2f}" for x in (start, end))


def _software(stamp: dict) -> str:
    parts = [f"torch {stamp['torch']}" if stamp.get("torch") else "",
             f"Python {stamp['python']}" if stamp.get("python") else ""]
    return ", ".join(p for p in parts if p)


def _machine(stamp: dict) -> str:
    parts = []
    if stamp.get("cpu"):
        isa = [stamp["torch_cpu_capability"]] if stamp.get("torch_cpu_capability") else []
        isa += [flag for flag in stamp.get("isa") or [] if flag.startswith("amx") or flag.endswith(HALF_FLAGS)]
        parts.append(f"{stamp['cpu']} ({', '.join(isa)})" if isa else stamp["cpu"])
    if stamp.get("threads"):
        of = f" of {stamp['cpus']} CPUs" if stamp.get("cpus") else ""
        parts.append(f"{stamp['threads']} torch thread(s){of}")
    return ", ".join(parts)


def repo_root(folder: Path) -> Path:
    top = git(folder, "rev-parse", "--show-toplevel")
    return Path(top) if top else folder


def git(repo: Path, *args: str) -> str | None:
    """``git -C repo ARGS`` stripped, or None where git or the repository is missing."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def has_uncommitted_changes(repo: Path) -> bool | None:
    """Whether files differ from the commit (untracked ones included), results files aside; None outside git."""
    status = git(repo, "status", "--porcelain", "--", ".", f":(exclude){RESULTS_DIR}")
    return None if status is None else bool(status)


def relative_path(path: Path, repo: Path) -> str:
    try:
        return path.relative_to(repo).as_posix()
    except ValueError:
        return str(path)


def command(argv: list[str], repo: Path) -> str:
    """The command line as typed from the repository root: ``python SCRIPT ARGS``, shell-quoted."""
    script = relative_path(Path(argv[0]).resolve(), repo) if argv else ""
    return shlex.join(["python", script, *argv[1:]])


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not on this platform
        return None


def cpu_model() -> str:
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    """The vector-extension flags of the CPU (AVX, AVX-512, AMX, FMA, F16C); [] where /proc/cpuinfo is absent."""
    for line in _cpuinfo_lines():
        if line.startswith("flags"):
            return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(ISA_PREFIXES))
    return []


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
