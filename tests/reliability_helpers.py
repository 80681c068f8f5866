"""Shared by the reliability tests: run the real CLI in a subprocess, watch it, compare run directories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import vlalign

SRC = str(Path(vlalign.__file__).resolve().parents[1])

# The tiny recipe, logging every step, one thread (bitwise results do not depend on scheduling), in fp32:
# train.precision=auto picks bf16 on CPUs that multiply it natively, and the golden losses are fp32's.
RUN = ["train.steps=20", "train.log_every=1", "train.checkpoint_every=5", "train.threads=1", "train.keep_last_k=3",
       "train.precision=fp32"]


def env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that imports this checkout's vlalign."""
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def train_argv(out: Path, overrides: list[str] = RUN, extra: list[str] = ()) -> list[str]:
    sets = [arg for o in overrides for arg in ("--set", o)]
    return ["train", "--recipe", "tiny", "--out", str(out), "--quiet", "--no-eval", *sets, *extra]


def start(argv: list[str], launcher: list[str] | None = None) -> subprocess.Popen:
    command = (launcher or [sys.executable, "-m", "vlalign"]) + argv
    return subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(argv: list[str], launcher: list[str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = start(argv, launcher)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    steps = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                steps.append(json.loads(line)["step"])
            except ValueError:  # a line being written
                pass
    return steps


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while max(logged_steps(out), default=0) < step:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before step {step}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"step {step} was not logged within {timeout} s")
        time.sleep(0.02)


def losses(out: Path) -> dict[int, str]:
    """step -> loss as float.hex, from metrics.jsonl (which must not repeat a step)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"duplicate steps in {out}/metrics.jsonl: {steps}"
    return {r["step"]: float(r["loss"]).hex() for r in records}


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Bitwise: every model and optimizer tensor, and every counter, RNG state and loader position."""
    for name in ("model.safetensors", "optimizer.safetensors"):
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{name}:{key} differs between {a} and {b}"
    sa, sb = (json.loads((p / "state.json").read_text()) for p in (a, b))
    for key in ("train_state", "ranks", "optimizer", "step", "world_size"):
        assert sa[key] == sb[key], f"state.json[{key!r}] differs between {a} and {b}"


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def rank_pid(launcher_pid: int, rank: int, timeout: float = 60) -> int:
    """The pid of the worker with RANK=rank among the launcher's children (Linux /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children(launcher_pid):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no rank {rank} worker under pid {launcher_pid}")


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    proc.send_signal(sig)
    proc.communicate(timeout=120)
