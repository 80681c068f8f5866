import os

import pytest
import torch

# Tiny test models gain nothing from a second thread, and lose a lot to contention when cores are busy.
torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg():
    from vlalign.recipes import get_recipe

    cfg = get_recipe("tiny")
    cfg.train.steps = 6
    cfg.train.checkpoint_every = 3
    cfg.train.log_every = 1
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
