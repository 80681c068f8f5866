"""Open-Qwen2VL's low-to-high resolution curriculum: image sizes over equal parts of training."""

import json

import pytest
import torch

from vlalign.config import apply_overrides
from vlalign.errors import ConfigError
from vlalign.recipes import get_recipe
from vlalign.train import run_training
from vlalign.train.curriculum import resize_batch, resolution_at


def test_sizes_follow_each_other_in_equal_parts():
    schedule = [16, 24, 32]
    for total in (3, 10, 11, 600):
        sizes = [resolution_at(step, total, schedule) for step in range(total)]
        assert sizes == sorted(sizes, key=schedule.index)  # consecutive blocks, in order
        counts = [sizes.count(s) for s in schedule]
        assert max(counts) - min(counts) <= 1 and sum(counts) == total
    assert resolution_at(5, 10, []) is None


def test_resizing_keeps_a_constant_image_and_leaves_other_keys():
    batch = {"images": torch.full((2, 3, 32, 32), 0.25), "text_ids": torch.ones(2, 4, dtype=torch.long)}
    out = resize_batch(batch, 16)
    assert out["images"].shape == (2, 3, 16, 16) and torch.allclose(out["images"], torch.tensor(0.25))
    assert out["text_ids"] is batch["text_ids"] and resize_batch(batch, 32) is batch


def test_a_run_trains_through_the_schedule(tmp_path):
    cfg = apply_overrides(get_recipe("tiny"), ["train.steps=4", "train.log_every=1", "train.checkpoint_every=4",
                                               "data.train=shapes:n=128,seed=0", "data.resolution_schedule=[16, 32]"])
    run_training(cfg, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["image_size"] for r in records] == [16, 16, 32, 32]
    # FLOPs per pair are counted anew at each size: the low-resolution steps cost less.
    per_pair = [r["flops_per_s"] / r["pairs_per_s"] for r in records]
    assert per_pair[0] < per_pair[-1]


def test_sizes_must_fit_the_patch_grid():
    with pytest.raises(ConfigError, match="resolution_schedule"):
        apply_overrides(get_recipe("tiny"), ["data.resolution_schedule=[12, 32]"])
