"""Two ranks on gloo (RELIABILITY.md tests 3, 4, 9; issue 7's equivalence tests).

The two-rank side of most tests runs once, in ``distributed_scenarios`` (one spawn per session);
each test here compares its results with a single-process reference computed in this process.
The SIGTERM test runs the real CLI: ``vlalign train --nproc 2``, then ``torchrun -m vlalign``.
"""

import json
import math
import os
import signal
import sys

import distributed_scenarios as scenarios
import pytest
import torch
from reliability_helpers import (
    assert_same_checkpoint,
    logged_steps,
    losses,
    rank_pid,
    run,
    start,
    train_argv,
    wait_for_step,
)
from safetensors.torch import load_file

from vlalign.checkpoint import complete_checkpoints, latest_checkpoint, load_checkpoint
from vlalign.config import ObjectiveConfig
from vlalign.objectives import build_objective
from vlalign.train.distributed import Replicate, free_port
from vlalign.train.optim import build_optimizer
from vlalign.train.step import TrainState, forward_backward, train_step


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks")
    torch.multiprocessing.spawn(scenarios.worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


def one_process(name: str, accum: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = scenarios.micro_model()
    objective = build_objective(ObjectiveConfig(name=name.split("+")[0]))
    loss, _ = forward_backward(model, objective, scenarios.scenario_batch(name), accum)
    return loss, scenarios.gradients(model)


@pytest.mark.parametrize("name", ["clip", "siglip", "clip+negatives", "siglip+negatives", "clip+negatives+paraphrases"])
def test_global_batch_64_is_the_same_loss_and_gradient_however_it_is_split(two_ranks, name):
    """1 x 64 vs 1 x 16 x accum 4 (GradCache), 2 ranks x 32, 2 x 16 x 2, and 2 x 32 under FSDP2;
    "+negatives": with hard-negative captions, gathered across ranks like the true ones; "+paraphrases": with
    positive paraphrases, a second positive column per image, gathered likewise."""
    loss, grads = one_process(name, accum=1)
    variants = {"1x16x4": one_process(name, accum=4)}
    for label in ("2x32", "2x16x2", "fsdp2x32"):
        saved = load_file(two_ranks / f"{name}_{label}.safetensors")
        variants[label] = saved["loss"][0], {k.removeprefix("grad/"): v for k, v in saved.items() if k != "loss"}
    for label, (other_loss, other_grads) in variants.items():
        assert abs(other_loss.item() - loss.item()) <= 1e-6, label
        assert other_grads.keys() == grads.keys(), label
        for key in grads:
            torch.testing.assert_close(other_grads[key], grads[key], atol=1e-5, rtol=0, msg=f"{label} {key}")


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_two_ranks_train_to_the_same_weights_as_one_process(two_ranks, name):
    cfg = scenarios.train_cfg()
    cfg.objective.name = name
    model = scenarios.micro_model()
    optimizer, state = build_optimizer(model, cfg.optim), TrainState()
    for step in range(3):
        train_step(model, build_objective(cfg.objective), optimizer, scenarios.global_batch(seed=step), state, cfg,
                   Replicate())
    for label in ("replicate", "fsdp"):
        saved = load_file(two_ranks / f"{name}_{label}_3steps.safetensors")
        for key, value in scenarios.parameters(model).items():
            torch.testing.assert_close(saved[key], value, atol=1e-5, rtol=0, msg=f"{label} {key}")


def test_logit_scale_never_exceeds_ln_100(two_ranks):
    cfg = scenarios.train_cfg()
    model = scenarios.micro_model()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100) + 1.0)  # as if the update had pushed it past the bound
    optimizer, state = build_optimizer(model, cfg.optim), TrainState()
    for step in range(2):
        train_step(model, build_objective(cfg.objective), optimizer, scenarios.global_batch(seed=step), state, cfg,
                   Replicate())
        # float32(ln 100) rounds above ln 100: the clamp uses the float32 just below it
        assert model.logit_scale.item() <= math.log(100) and model.logit_scale.exp().item() <= 100.0
    assert model.logit_scale.item() == pytest.approx(math.log(100), abs=1e-3)
    records = [json.loads(line) for line in (two_ranks / "reference2" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["logit_scale"] <= 100.0 for r in records)


def rank_reports(two_ranks, name: str) -> list[dict]:
    return [json.loads((two_ranks / f"{name}_rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nonfinite_loss_on_rank_1_stops_both_ranks_before_the_update(two_ranks, value):
    for report in rank_reports(two_ranks, "nonfinite"):
        assert "step 3" in report[f"error/{value}"]
        assert report[f"unchanged/{value}"]  # weights, optimizer state (and lr), counters: bitwise post-step-2


def test_skip_policy_skips_and_counts_then_aborts_after_more_than_k_in_a_row(two_ranks):
    for report in rank_reports(two_ranks, "nonfinite"):
        assert report["skip/returned"] is None and report["skip/unchanged"]
        assert report["skip/counters"] == [1, 1]  # step 1 done, one skipped
        assert report["skip/after_clean"] == [2, 1, 0]
        assert "4 non-finite steps in a row" in report["skip/abort"]
        assert report["skip/final_counters"] == [2, 5, 4]


def test_nonfinite_in_the_trainer_writes_no_checkpoint_for_that_step(two_ranks):
    for report in rank_reports(two_ranks, "nonfinite_run"):
        assert "step 3" in report["error"]
    assert [p.name for p in complete_checkpoints(two_ranks / "nonfinite_run" / "checkpoints")] == ["step-1", "step-2"]
    assert logged_steps(two_ranks / "nonfinite_run") == [1, 2]


def test_fsdp_run_resumes_bitwise_and_saves_full_weights(two_ranks):
    whole, resumed = two_ranks / "fsdp_whole", two_ranks / "fsdp_resumed"
    assert_same_checkpoint(whole / "checkpoints" / "step-6", resumed / "checkpoints" / "step-6")
    assert losses(whole) == losses(resumed)
    ema, resumed_ema = (load_file(d / "checkpoints" / "step-6" / "ema.safetensors") for d in (whole, resumed))
    assert ema.keys() == resumed_ema.keys() and all(torch.equal(ema[k], resumed_ema[k]) for k in ema)
    tensors, optimizer, meta = load_checkpoint(whole / "checkpoints" / "step-6")
    model = scenarios.micro_model()
    assert meta["world_size"] == 2 and len(meta["ranks"]) == 2
    assert {k: v.shape for k, v in tensors.items()}.keys() == model.state_dict().keys()  # unsharded, every weight
    # full optimizer state for every trained parameter (CLIP never uses, so never updates, the logit bias)
    assert set(optimizer["state"]) == {n for n, p in model.named_parameters()} - {"logit_bias"}
    assert all(v.shape == tensors[n].shape for n, e in optimizer["state"].items() for k, v in e.items()
               if k != "step")


def test_sigterm_on_rank_0_stops_both_ranks_at_one_step_then_torchrun_resumes_bitwise(two_ranks, tmp_path):
    out = tmp_path / "run"
    proc = start(train_argv(out, extra=["--nproc", "2"]))
    rank0 = rank_pid(proc.pid, 0)
    wait_for_step(proc, out, 7)
    os.kill(rank0, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    stops = [line for line in err.splitlines() if "Stopped by SIGTERM at step" in line]
    step = int(latest_checkpoint(out / "checkpoints").name.removeprefix("step-"))
    assert len(stops) == 2 and all(f"at step {step};" in line for line in stops)  # both ranks, the same step
    assert 7 <= step < 20 and max(logged_steps(out)) == step
    ranks = json.loads((out / "checkpoints" / f"step-{step}" / "state.json").read_text())["ranks"]
    assert ranks[0]["loader"]["next_batch"] == ranks[1]["loader"]["next_batch"]
    with pytest.raises(ProcessLookupError):
        os.kill(rank0, 0)  # nothing left running

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vlalign"]
    done = run(train_argv(out), launcher=torchrun)
    assert done.returncode == 0, done.stderr
    assert_same_checkpoint(out / "checkpoints" / "step-20", two_ranks / "reference2" / "checkpoints" / "step-20")
    assert losses(out) == losses(two_ranks / "reference2")


@pytest.mark.parametrize("name", sorted(scenarios.CATALOGUE))
def test_catalogue_objectives_see_the_global_batch_however_it_is_split(two_ranks, name):
    """FILIP's token sets and UniCL's labels and text types are gathered like embeddings: 2 ranks x 32
    (and FSDP2; UniCL also under GradCache) give the loss and gradients of one process with 64."""
    model = scenarios.catalogue_model(name)
    loss, _ = forward_backward(model, build_objective(ObjectiveConfig(name=name)), scenarios.catalogue_batch())
    grads = scenarios.gradients(model)
    for label, _, _ in scenarios.catalogue_splits(name):
        saved = load_file(two_ranks / f"{name}_{label}.safetensors")
        assert abs(saved["loss"][0].item() - loss.item()) <= 1e-6, label
        other = {k.removeprefix("grad/"): v for k, v in saved.items() if k != "loss"}
        assert other.keys() == grads.keys(), label
        for key in grads:
            torch.testing.assert_close(other[key], grads[key], atol=1e-5, rtol=0, msg=f"{label} {key}")


# Terms averaged over the local batch (per-sample cross-entropy, the streams of one image): each rank's value is
# its own half's, and only the averaged gradients are the global batch's.
LOCAL_TERMS = {"loss/supervised", "train_accuracy", "loss/separation"}


@pytest.mark.parametrize("name", sorted(scenarios.VIEW_MODELS))
def test_view_objectives_see_the_global_batch_however_it_is_split(two_ranks, name):
    """GPT4Image, MeDSLIP (k-means of the global batch), VELVET-Med and PS3 gather their extra views: 2 ranks x 32
    give the gradients, and every batch-level term, of one process with 64."""
    model = scenarios.views_model(name)
    loss, metrics = forward_backward(model, build_objective(ObjectiveConfig(name=name)), scenarios.views_batch(name))
    grads = scenarios.gradients(model)
    saved = load_file(two_ranks / f"views_{name}.safetensors")
    if not LOCAL_TERMS & metrics.keys():
        assert saved["loss"][0].item() == pytest.approx(loss.item(), rel=1e-6)
    for key in metrics.keys() - LOCAL_TERMS:
        assert saved[f"metric/{key}"][0].item() == pytest.approx(metrics[key], rel=1e-6), key
    other = {k.removeprefix("grad/"): v for k, v in saved.items() if k.startswith("grad/")}
    assert other.keys() == grads.keys()
    for key in grads:
        torch.testing.assert_close(other[key], grads[key], atol=1e-5, rtol=0, msg=key)
