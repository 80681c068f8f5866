"""Throughput instrumentation: FLOPs per sample, the cached matmul peak, the logged fields."""

import json

import pytest
import torch
from distributed_scenarios import global_batch, micro_model
from torch.utils.flop_counter import FlopCounterMode

from vlalign.train import metrics
from vlalign.train.metrics import count_flops_per_sample, machine_key, matmul_peak_flops


def test_flops_per_sample_is_one_nth_of_a_batch_of_n_forward_and_backward():
    model, batch = micro_model(), global_batch(size=4)
    per_sample = count_flops_per_sample(model, batch)
    with FlopCounterMode(display=False) as forward_only:
        model(batch["images"], batch["text_ids"], batch["text_mask"], batch["channel_ids"])
    with FlopCounterMode(display=False) as both:
        out = model(batch["images"], batch["text_ids"], batch["text_mask"], batch["channel_ids"])
        (out.image_embeds.sum() + out.text_embeds.sum()).backward()
    assert per_sample == both.get_total_flops() / 4
    # backward costs about twice the forward (no input gradient for the first layers' inputs)
    assert 2.5 < both.get_total_flops() / forward_only.get_total_flops() <= 3.0


def test_counting_flops_draws_no_random_numbers():
    model, batch = micro_model(), global_batch(size=2)
    state = torch.get_rng_state()
    count_flops_per_sample(model, batch)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in model.parameters())


def test_the_matmul_peak_is_probed_once_per_machine_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("VLALIGN_CACHE_DIR", str(tmp_path))
    probes = []
    monkeypatch.setattr(metrics, "probe_matmul_peak", lambda device: probes.append(device) or 1.5e11)
    assert matmul_peak_flops() == 1.5e11 and matmul_peak_flops() == 1.5e11
    assert probes == ["cpu"]
    assert json.loads((tmp_path / "peak.json").read_text()) == {machine_key(): 1.5e11}
    assert f"threads={torch.get_num_threads()}" in machine_key()


def test_the_real_probe_measures_a_plausible_rate():
    assert 1e8 < metrics.probe_matmul_peak("cpu", repeats=1) < 1e16


def test_every_logged_step_has_throughput_fields(reference_run):
    for line in (reference_run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert record["pairs_per_s"] > 0 and 0 <= record["data_wait_fraction"] <= 1
        assert record["flops_per_s"] > 0 and record["flops_fraction_of_peak"] > 0
        assert record["peak_memory_mib"] > 0
        assert record["flops_per_s"] == pytest.approx(record["flops_fraction_of_peak"] * matmul_peak_flops(), rel=1e-9)
