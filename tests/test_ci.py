"""CI cannot pass quietly: .ci/run stops at a failed install and runs the suite with CI=true, where
(ci_skips) a skip for a missing package fails and a machine's skip stays a skip; elsewhere both skip."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

CI_RUN = Path(__file__).parents[1] / ".ci" / "run"
# What .ci/run and the fakes below run besides apt-get, pip and python (bash runs the script by its absolute path).
COREUTILS = ("basename", "dirname", "mktemp", "rm", "sed", "seq", "sh", "tail")
# A stand-in for apt-get, pip and python: logs its command line (and $CI); fails after 100 lines if it matches $FAIL.
FAKE_TOOL = """#!/bin/sh
echo "$(basename "$0") $* CI=$CI" >> "$CALLS"
case "$(basename "$0") $*" in "$FAIL"*) seq 1 100 | sed 's/^/line /'; exit 100;; esac
"""

SAMPLE = '''
import pytest
from ci_skips import machine_skipif

def test_runs():
    pass

def test_needs_a_package():
    pytest.importorskip("no_such_package_for_ci_skips", reason="pip install no-such-package")

@machine_skipif(True, "no such hardware")
def test_needs_hardware():
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_known_failure():
    assert False
'''
WHOLE_MODULE = '''
import pytest
pytest.importorskip("no_such_package_for_ci_skips", reason="pip install no-such-package")

def test_never_collected():
    pass
'''


def run_sample(tmp_path: Path, source: str, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "ci_skips",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def summary(result: subprocess.CompletedProcess) -> str:
    return result.stdout.strip().splitlines()[-1]


def test_in_ci_a_missing_package_fails_and_a_machine_condition_skips(tmp_path):
    result = run_sample(tmp_path, SAMPLE, "true")
    assert result.returncode == 1 and "1 failed, 1 passed, 1 skipped, 1 xfailed" in summary(result), result.stdout
    assert "skipped in CI: pip install no-such-package" in result.stdout
    assert "machine: no such hardware" in result.stdout
    assert "CI: 1 skipped for a condition of this machine" in result.stdout


def test_in_ci_a_module_that_skips_as_a_whole_is_a_collection_error(tmp_path):
    result = run_sample(tmp_path, WHOLE_MODULE, "true")
    assert result.returncode == 2 and "1 error" in summary(result), result.stdout  # 2: pytest's "interrupted"
    assert "skipped in CI: pip install no-such-package" in result.stdout


def test_outside_ci_every_skip_is_a_skip(tmp_path):
    # 5: pytest's "no tests ran", the whole sample having skipped.
    for source, code, expected in ((SAMPLE, 0, "1 passed, 2 skipped, 1 xfailed"), (WHOLE_MODULE, 5, "1 skipped")):
        result = run_sample(tmp_path, source, None)
        assert result.returncode == code and expected in summary(result), result.stdout
        assert "CI:" not in result.stdout


def run_ci_script(tmp_path: Path, tools: tuple[str, ...] = ("apt-get", "pip", "python"),
                  fail: str = "no command") -> tuple[subprocess.CompletedProcess, list[str]]:
    """.ci/run with a PATH of fakes and coreutils only: nothing is installed and no real suite runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in COREUTILS:
        (bin_dir / name).symlink_to(shutil.which(name))
    for name in tools:
        (bin_dir / name).write_text(FAKE_TOOL)
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    env = {"PATH": str(bin_dir), "CALLS": str(calls), "FAIL": fail, "HOME": str(tmp_path)}
    result = subprocess.run([shutil.which("bash"), str(CI_RUN)], env=env, capture_output=True, text=True, timeout=60)
    return result, calls.read_text().splitlines() if calls.is_file() else []


def test_ci_script_installs_everything_then_runs_the_suite_with_ci_set(tmp_path):
    result, calls = run_ci_script(tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls[0] == "apt-get update -qq CI=true"
    assert calls[1].startswith("apt-get install -y -qq dataset-fashion-mnist chromium chromium-driver")
    assert "pip install -q datasets CI=true" in calls
    assert calls[-1] == "python -m pytest -x -q tests CI=true"


def test_a_failed_apt_install_stops_the_ci_script_showing_the_end_of_its_output(tmp_path):
    result, calls = run_ci_script(tmp_path, fail="apt-get install")
    assert result.returncode == 100
    assert "error: 'apt-get install -y -qq dataset-fashion-mnist chromium chromium-driver' failed" in result.stderr
    shown = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert shown == [f"line {i}" for i in range(61, 101)]  # the last 40 lines
    assert not any(call.startswith(("pip", "python")) for call in calls)  # nothing ran after it


def test_the_ci_script_refuses_a_machine_without_apt_get(tmp_path):
    result, calls = run_ci_script(tmp_path, tools=("pip", "python"))
    assert result.returncode == 1 and "error: no apt-get" in result.stderr
    assert calls == []
