"""RELIABILITY.md test 10: an out-of-memory step (or any exception) leaves no partial step behind."""

import pytest
import torch
from safetensors.torch import load_file

from vlalign.checkpoint import latest_checkpoint
from vlalign.config import apply_overrides
from vlalign.errors import OutOfMemory
from vlalign.objectives import EMBEDDING_OBJECTIVES, OBJECTIVES, clip_objective
from vlalign.recipes import get_recipe
from vlalign.train import run_training

# fp32 pinned: the runs compared here must not depend on whether this CPU multiplies bf16 natively (auto).
OVERRIDES = ["train.steps=6", "train.checkpoint_every=2", "train.log_every=1", "train.threads=1",
             "train.precision=fp32"]


@pytest.fixture
def failing_objective():
    """Registers objective "fail-at-3": CLIP, except that its third call raises the given exception."""
    raised = {"exc": torch.OutOfMemoryError("CPU out of memory (injected)"), "calls": 0}

    def factory(cfg):
        inner = clip_objective(cfg)

        def objective(out, batch):
            raised["calls"] += 1
            if raised["calls"] == 3:
                raise raised["exc"]
            return inner(out, batch)

        return objective

    OBJECTIVES["fail-at-3"] = factory
    EMBEDDING_OBJECTIVES.add("fail-at-3")  # like CLIP, it reads only the embeddings: the same forward
    yield raised
    del OBJECTIVES["fail-at-3"]
    EMBEDDING_OBJECTIVES.discard("fail-at-3")


def config(objective):
    cfg = apply_overrides(get_recipe("tiny"), OVERRIDES)
    cfg.objective.name = objective  # set after validation: the test objective is not a documented choice
    return cfg


def test_oom_names_the_batch_and_remedy_and_the_last_checkpoint_resumes_bitwise(tmp_path, failing_objective):
    with pytest.raises(OutOfMemory, match=r"step 3 with a per-device batch of 32.*train\.accum_steps"):
        run_training(config("fail-at-3"), tmp_path / "run", progress=False)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-2"  # no partial step saved
    run_training(config("clip"), tmp_path / "run", progress=False)  # rerun resumes from step 2
    run_training(config("clip"), tmp_path / "clean", progress=False)
    resumed = load_file(tmp_path / "run" / "checkpoints" / "step-6" / "model.safetensors")
    clean = load_file(tmp_path / "clean" / "checkpoints" / "step-6" / "model.safetensors")
    assert resumed.keys() == clean.keys() and all(torch.equal(resumed[k], clean[k]) for k in clean)


def test_oom_is_a_user_facing_error_with_its_own_exit_code():
    from vlalign.errors import VlalignError

    assert issubclass(OutOfMemory, VlalignError) and OutOfMemory.exit_code not in (0, 1, 2, 143)


def test_any_other_exception_propagates_without_a_partial_checkpoint(tmp_path, failing_objective):
    failing_objective["exc"] = RuntimeError("backward failed (injected)")
    with pytest.raises(RuntimeError, match="injected"):
        run_training(config("fail-at-3"), tmp_path / "run", progress=False)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-2"
