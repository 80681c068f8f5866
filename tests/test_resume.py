"""Crash-safe, bitwise resume through the real CLI (RELIABILITY.md tests 1, 3 single-process, 8, 10).

The session's ``reference_run`` (an uninterrupted 20-step run of the tiny recipe) is the reference;
interrupted runs are rerun with the same command and must end bitwise equal to it. A SIGKILL needs
a separate process; the reruns run the CLI in this process (the same code, without a second
torch import per test).
"""

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import (
    RUN,
    assert_same_checkpoint,
    kill,
    logged_steps,
    losses,
    start,
    train_argv,
    wait_for_step,
)

from vlalign.checkpoint import complete_checkpoints, latest_checkpoint
from vlalign.cli import main

GOLDEN = Path(__file__).parent / "assets" / "losses" / "tiny_clip_cpu.txt"
# fp32 GEMMs add in an order set by the CPU's kernels (vector width, MKL / oneDNN code path), so the same run
# rounds differently on another CPU: an AMD EPYC (AVX-512) is within 2 ulps of the golden file's machine at every
# step. 8 leaves a 4x margin; step 1's loss (the init on the first batch) moves far more under any change of what
# is computed. On one machine the run is reproduced bit for bit: the resume tests compare against its reference.
GOLDEN_ULPS = 8


@pytest.fixture
def reference(reference_run):
    return reference_run


@pytest.mark.parametrize("workers, kill_after", [(0, 6), (2, 17)], ids=["after-checkpoint", "workers2-epoch-boundary"])
def test_sigkill_then_rerun_resumes_bitwise(reference, tmp_path, workers, kill_after):
    out = tmp_path / "run"
    argv = train_argv(out, RUN + [f"data.num_workers={workers}"])
    proc = start(argv)
    wait_for_step(proc, out, kill_after)
    kill(proc, signal.SIGKILL)
    resume_step = int(latest_checkpoint(out / "checkpoints").name.removeprefix("step-"))
    assert kill_after - 5 < resume_step < 20  # killed mid-run, after the checkpoint before kill_after
    if kill_after > 16:
        assert resume_step < 16  # 16 batches per epoch: the resumed run crosses the epoch boundary

    assert main(argv) == 0  # the same command again
    assert_same_checkpoint(out / "checkpoints" / "step-20", reference / "checkpoints" / "step-20")
    assert losses(out) == losses(reference)  # every step once, each loss bit-identical (float.hex)


def test_sigterm_stops_at_a_step_boundary_saves_and_exits_143(reference, tmp_path, capsys):
    """A real SIGTERM to this process while the CLI trains in it (the 2-rank test uses subprocesses)."""
    out = tmp_path / "run"

    def send_sigterm_after_step_7():
        while max(logged_steps(out), default=0) < 7:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send_sigterm_after_step_7, daemon=True).start()
    assert main(train_argv(out)) == 143
    err = capsys.readouterr().err
    stopped = latest_checkpoint(out / "checkpoints")
    step = int(stopped.name.removeprefix("step-"))
    assert f"Stopped by SIGTERM at step {step}" in err and "Traceback" not in err
    assert 7 <= step < 20 and max(logged_steps(out)) == step

    assert main(train_argv(out)) == 0  # resume to the end
    assert_same_checkpoint(out / "checkpoints" / "step-20", reference / "checkpoints" / "step-20")
    assert losses(out) == losses(reference)


def test_rerunning_a_finished_run_does_no_step_and_exits_0(reference, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = {p.name: p.stat().st_mtime_ns for p in complete_checkpoints(out / "checkpoints")}
    metrics = (out / "metrics.jsonl").read_text()
    assert main(train_argv(out)) == 0
    assert "trained 20 steps" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in complete_checkpoints(out / "checkpoints")} == before
    assert (out / "metrics.jsonl").read_text() == metrics
    assert logged_steps(out) == list(range(1, 21))


def test_keep_last_k_leaves_the_newest_complete_checkpoints(reference):
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["step-10", "step-15", "step-20"]


def test_losses_match_the_golden_file(reference):
    """First 20 losses of the tiny recipe on CPU in fp32, to within GOLDEN_ULPS float32 ulps. An intentional
    numerics change must regenerate the file in the same commit: VLALIGN_UPDATE_GOLDEN=1 pytest tests/test_resume.py."""
    got = [losses(reference)[step] for step in range(1, 21)]
    if os.environ.get("VLALIGN_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        header = "# tiny recipe, train.threads=1, train.precision=fp32, CPU: loss of steps 1-20 as float.hex"
        GOLDEN.write_text(header + "\n" + "\n".join(got) + "\n")
    expected = [float.fromhex(line) for line in GOLDEN.read_text().splitlines() if line and not line.startswith("#")]
    ulps = [abs(float.fromhex(g) - e) / float(np.spacing(np.float32(e))) for g, e in zip(got, expected, strict=True)]
    assert max(ulps) <= GOLDEN_ULPS, ulps
