"""CI cannot pass quietly: with CI=true (ci_skips) a skip for a missing package fails and a machine's skip
stays a skip; elsewhere both skip."""

import os
import subprocess
import sys
from pathlib import Path

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

