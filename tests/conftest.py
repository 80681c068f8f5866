import os

import pytest
import torch

# In CI a test that skips for a missing package or data set fails (ci_skips.py): the hooks, by name.
from ci_skips import pytest_make_collect_report, pytest_runtest_makereport, pytest_terminal_summary  # noqa: F401

# Tiny test models gain nothing from a second thread, and lose a lot to contention when cores are busy.
torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg():
    from vlalign.recipes import get_recipe

    cfg = get_recipe("tiny")
    cfg.train.steps = 6
    cfg.train.checkpoint_every = 3
    cfg.train.log_every = 1
    # fp32 pinned: tests compare these runs bit for bit or with fp32 tolerances, and auto picks bf16 on CPUs
    # that multiply it natively.
    cfg.train.precision = "fp32"
    return cfg


@pytest.fixture(scope="session")
def trained_tiny_run(tmp_path_factory):
    """A run directory of the `tiny` recipe trained for 3 steps (shared by the embed / serve / export tests)."""
    from vlalign.recipes import get_recipe
    from vlalign.train import run_training

    cfg = get_recipe("tiny")
    cfg.data.train = "shapes:n=128,seed=0"
    cfg.train.steps, cfg.train.checkpoint_every = 3, 3
    run_dir = tmp_path_factory.mktemp("tiny-run")
    run_training(cfg, run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Runs measure the matmul peak once per machine; on a busy test machine that number is low, so
    keep it out of the user's ~/.cache/vlalign (subprocesses inherit the variable)."""
    os.environ["VLALIGN_CACHE_DIR"] = str(tmp_path_factory.mktemp("vlalign-cache"))


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """An uninterrupted 20-step run of the tiny recipe through the CLI, in this process: the bitwise
    reference for resumed runs, and a finished run directory to copy (see reliability_helpers.RUN)."""
    from reliability_helpers import train_argv

    from vlalign.cli import main

    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(train_argv(out)) == 0
    return out
