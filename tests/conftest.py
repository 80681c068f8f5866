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
