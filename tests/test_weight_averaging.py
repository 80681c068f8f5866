"""MindVL weight averaging: the mean of the last K checkpoints, and an EMA of the weights while training."""

import shutil

import pytest
import torch
from reliability_helpers import losses
from safetensors.torch import load_file
from torch import nn

from vlalign.api import load
from vlalign.checkpoint import EMA_FILE, load_tensors, save_checkpoint
from vlalign.errors import CheckpointError
from vlalign.train import run_training
from vlalign.train.averaging import ExponentialMovingAverage, average_checkpoints


def fake_checkpoint(root, step, generator):
    weights = {"w": torch.randn(3, 4, generator=generator), "b": torch.randn(4, generator=generator),
               "count": torch.tensor([step])}
    save_checkpoint(root, step, weights, None, {"train_state": {"step": step}, "config": {}})
    return weights


def test_averaging_two_checkpoints_is_the_elementwise_mean(tmp_path):
    g = torch.Generator().manual_seed(0)
    fake_checkpoint(tmp_path / "checkpoints", 10, g)  # older than the two averaged
    a = fake_checkpoint(tmp_path / "checkpoints", 20, g)
    b = fake_checkpoint(tmp_path / "checkpoints", 30, g)
    path = average_checkpoints(tmp_path, last=2)
    assert path.name == "average-last-2" and (path / "COMMITTED").is_file()
    avg = load_tensors(path / "model.safetensors")
    for name in ("w", "b"):
        assert torch.equal(avg[name], (a[name] + b[name]) / 2)
    assert torch.equal(avg["count"], b["count"])  # integers are not averaged: the newest is kept

    three = load_tensors(average_checkpoints(tmp_path, last=3) / "model.safetensors")
    c = load_tensors(tmp_path / "checkpoints" / "step-10" / "model.safetensors")
    assert torch.allclose(three["w"], (a["w"] + b["w"] + c["w"]) / 3, atol=1e-7)


def test_averaging_more_checkpoints_than_kept_is_a_clear_error(tmp_path):
    fake_checkpoint(tmp_path / "checkpoints", 5, torch.Generator().manual_seed(0))
    with pytest.raises(CheckpointError, match="1 complete checkpoints, fewer than the 3"):
        average_checkpoints(tmp_path, last=3)


def test_ema_update_matches_the_formula():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    frozen = nn.Parameter(torch.ones(2), requires_grad=False)
    model.register_parameter("frozen", frozen)
    ema = ExponentialMovingAverage(model, decay=0.9)
    assert "frozen" not in ema.shadow
    expected = {n: p.detach().clone() for n, p in model.named_parameters() if n != "frozen"}
    for step in range(1, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model, step)
        d = min(0.9, (1 + step) / (10 + step))
        for name, p in model.named_parameters():
            if name in expected:
                expected[name] = d * expected[name] + (1 - d) * p.detach()
    assert ema.decay_at(1) == 2 / 11 and ema.decay_at(100) == 0.9
    for name, value in expected.items():
        assert torch.allclose(ema.shadow[name], value, atol=1e-6)
    saved = ema.state_dict(model.state_dict())
    assert torch.equal(saved["frozen"], frozen) and torch.equal(saved["weight"], ema.shadow["weight"])


def test_a_resumed_run_with_ema_matches_an_uninterrupted_one(tiny_cfg, tmp_path):
    tiny_cfg.train.ema_decay = 0.8
    tiny_cfg.train.keep_last_k = 0
    tiny_cfg.train.threads = 1
    full = tmp_path / "full"
    run_training(tiny_cfg, full, progress=False)
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-6")  # as if killed after the step-3 checkpoint
    run_training(tiny_cfg, resumed, progress=False)

    for name in ("model.safetensors", "optimizer.safetensors", EMA_FILE):
        a, b = load_file(full / "checkpoints/step-6" / name), load_file(resumed / "checkpoints/step-6" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert losses(full) == losses(resumed)

    # eval uses the average when the run trained one; the trained weights stay available
    ema, trained = load_file(full / "checkpoints/step-6" / EMA_FILE), load_file(full / "checkpoints/step-6/model.safetensors")
    name = "vision.transformer.blocks.0.attn.qkv.weight"
    assert not torch.equal(ema[name], trained[name])
    assert torch.equal(load(full).model.state_dict()[name], ema[name])
    assert torch.equal(load(full, weights="model").model.state_dict()[name], trained[name])


def test_loading_ema_weights_of_a_run_without_them_is_a_clear_error(trained_tiny_run, tmp_path):
    run = shutil.copytree(trained_tiny_run, tmp_path / "run")
    with pytest.raises(CheckpointError, match="has no EMA weights"):
        load(run, weights="ema")
    averaged = average_checkpoints(run, last=1)
    assert load(averaged).step == 3  # an averaged checkpoint loads like any other
