import os

import pytest
import torch

# Tests share two cores with each other and with nothing else: keep torch to what we have.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_cfg():
    from vlalign.recipes import get_recipe

    cfg = get_recipe("tiny")
    cfg.train.steps = 6
    cfg.train.checkpoint_every = 3
    cfg.train.log_every = 1
    return cfg
