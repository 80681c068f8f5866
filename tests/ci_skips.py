"""In CI (CI=true) a skipped test fails, unless what it lacks is a condition of the machine.

Tests skip when an optional package or data set is missing (``pytest.importorskip``, ``skipif`` with an
install hint): right on a laptop, but in CI, which installs all of them (``.ci/run``), such a skip means
an install went wrong and the suite would pass without running those tests. Skips that no install can
cure (no glibc, transparent huge pages always on, a torch without fbgemm) say so with ``machine_skipif``
/ ``machine_skip`` and stay skips; CI counts them at the end of the run.

Loaded by ``conftest.py``; a plugin module of its own so that a test can run pytest with it alone.
"""

from __future__ import annotations

import os

import pytest

MACHINE = "machine: "  # how the reason of a skip that CI accepts begins


def machine_skipif(condition: bool, reason: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(condition, reason=MACHINE + reason)


def machine_skip(reason: str) -> None:
    pytest.skip(MACHINE + reason)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _skip_reason(report) -> str | None:
    """The reason of a skip (pytest's "Skipped: " dropped), None for any other outcome and for an xfail."""
    if not report.skipped or hasattr(report, "wasxfail") or not isinstance(report.longrepr, tuple):
        return None
    return report.longrepr[2].removeprefix("Skipped: ")


def _fail_a_dependency_skip(report):
    reason = _skip_reason(report)
    if in_ci() and reason is not None and not reason.startswith(MACHINE):
        report.outcome = "failed"
        report.longrepr = (f"skipped in CI: {reason}\n.ci/run installs every package and data set the tests use, "
                           "so this one is missing because an install failed (or .ci/run lacks it).")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    return _fail_a_dependency_skip((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A module that skips as a whole (``importorskip`` at import) is one collection report."""
    return _fail_a_dependency_skip((yield))


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    if in_ci() and skipped:
        terminalreporter.write_line(f"CI: {len(skipped)} skipped for a condition of this machine "
                                    "(see the short test summary)", yellow=True, bold=True)
