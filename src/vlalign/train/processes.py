"""Run jobs in processes of their own, at most N at a time (``vlalign train --seeds-parallel``).

Each job is a function and its arguments, called in a fresh (spawned) Python process. SIGTERM to this process
is passed on to the running jobs, which stop at their next step boundary and save (``vlalign.train.trainer``);
Ctrl-C does the same (the jobs themselves ignore SIGINT, so they stop cleanly). Then no new job starts.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from multiprocessing import get_context
from multiprocessing.connection import wait

from vlalign.errors import VlalignError
from vlalign.train.trainer import SIGTERM_EXIT_CODE, GracefulStop


def _job(fn: Callable, args: tuple, label: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it passes SIGTERM on
    try:
        fn(*args)
    except VlalignError as err:
        print(f"{label}: {getattr(err, 'label', 'error')}: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


def run_in_processes(jobs: dict[str, tuple[Callable, tuple]], workers: int,
                     say: Callable[[str], None] = lambda line: None) -> None:
    """Run ``{label: (fn, args)}``, ``workers`` at a time. Raises VlalignError naming the jobs that failed (no
    new job starts after a failure), GracefulStop after SIGTERM, KeyboardInterrupt after Ctrl-C."""
    context = get_context("spawn")
    queue = list(jobs.items())
    running = {}
    failed: list[str] = []
    why_stopped: list[str] = []

    def stop(reason: str) -> None:
        why_stopped.append(reason)
        for process in running.values():
            if process.exitcode is None:
                process.terminate()  # SIGTERM: a training job saves at its next step boundary and exits 143

    previous = _install(signal.SIGTERM, lambda signum, frame: stop("SIGTERM"))
    try:
        while running or (queue and not why_stopped and not failed):
            while queue and not why_stopped and not failed and len(running) < workers:
                label, (fn, args) = queue.pop(0)
                running[label] = context.Process(target=_job, args=(fn, args, label), name=label)
                running[label].start()
            try:
                wait([process.sentinel for process in running.values()])
            except KeyboardInterrupt:
                stop("Ctrl-C")
            for label, process in list(running.items()):
                if process.exitcode is None:
                    continue
                process.join()
                del running[label]
                if process.exitcode == 0:
                    say(f"{label}: done")
                elif process.exitcode in (SIGTERM_EXIT_CODE, -signal.SIGTERM):
                    stop("SIGTERM")  # stopped by a SIGTERM of its own: the others stop too
                else:
                    failed.append(f"{label} (exit code {process.exitcode})")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if failed:
        raise VlalignError(f"{', '.join(failed)} failed; its messages are above. Rerunning the same command "
                           "retries it and skips what finished.")
    if "Ctrl-C" in why_stopped:
        raise KeyboardInterrupt
    if why_stopped:
        raise GracefulStop("Stopped by SIGTERM; the running jobs saved their checkpoints. Rerun the same command "
                           "to resume.")


def _install(signum: int, handler):
    try:
        return signal.signal(signum, handler)
    except ValueError:  # not the main thread: no handler
        return None
