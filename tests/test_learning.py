"""Learning, not only running: on a small shapes world CLIP and SigLIP learn colour from matched pairs and learn
nothing transferable from the same captions moved to other images; a run interrupted midway and resumed
ends where the uninterrupted run does.

Single-object scenes at 24 px (a 3x3 grid of 8 px patches: one token per cell of the world's grid), micro
towers, one thread, fp32. Colour zero-shot is scored on held-out scenes (seed 2, not the training seed 0)
among the 8 colours: chance is 1/8.
"""

import os
import signal
import threading
import time

import pytest
import torch
from reliability_helpers import logged_steps
from safetensors.torch import load_file

from vlalign.api import load
from vlalign.checkpoint import latest_checkpoint
from vlalign.eval import evaluate
from vlalign.recipes import get_recipe
from vlalign.train import GracefulStop, run_training

WORLD = "shapes:n=4000,seed=0,objects=1,size=24"
SHUFFLED = f"shuffled:fraction=1,seed=0:{WORLD}"  # every caption on another scene's image
HELD_OUT = "shapes:n=512,seed=2,objects=1,size=24"
CHANCE = 1 / 8
# Per objective: (steps, initial temperature). On these micro towers the image embeddings of different scenes
# start at cosine 0.99 to each other; the runs sit on the loss of uniform guessing until that breaks. CLIP leaves
# it sooner with a sharper softmax (t = 50). SigLIP keeps its bias of -10 and starts at t = 20: at t = 50 every
# pair starts positive (loss > 100) and the run falls back onto the plateau, at its paper's t = 10 positives can
# reach only p = 0.5 and colour was learned less reliably (0.78-0.99 over 3 seeds at 300 steps).
SETTINGS = {"clip": (200, 0.02), "siglip": (400, 0.05)}


def learning_config(objective: str, train: str = WORLD, seed: int = 0):
    """The tiny recipe's micro towers on single-object scenes, tuned to learn colour in a few hundred steps."""
    steps, temperature = SETTINGS[objective]
    cfg = get_recipe("tiny")
    cfg.data.train, cfg.data.image_size, cfg.data.batch_size = train, 24, 64
    # Per-channel statistics of these mostly black scenes scale the objects' pixels up: 5x the spread
    # between scenes' initial image embeddings, and colour learned in 100-200 steps instead of 500+.
    cfg.data.normalization = "per_channel"
    cfg.objective.name = objective
    cfg.model.init_temperature = temperature
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.beta2, cfg.optim.weight_decay = 1e-3, 20, 0.95, 0.0
    cfg.train.steps, cfg.train.seed, cfg.train.threads, cfg.train.precision = steps, seed, 1, "fp32"
    cfg.train.log_every, cfg.train.checkpoint_every = 10, steps
    cfg.eval.zeroshot_n = 512
    return cfg


def zeroshot(run_dir) -> dict[str, float]:
    """Held-out zero-shot top-1 by label set (shape, colour, shape+colour)."""
    results = evaluate(load(run_dir), ["zeroshot"], HELD_OUT, write=False).results
    return {r["labels"]: r["top1"] for r in results}


class Runs:
    """Each (objective, data) trained once per module: the interrupted-run test reuses the CLIP run."""

    def __init__(self, root):
        self.root, self.done = root, {}

    def get(self, objective: str, train: str = WORLD):
        key = (objective, train)
        if key not in self.done:
            run_dir = self.root / f"{objective}-{len(self.done)}"
            run_training(learning_config(objective, train), run_dir, progress=False)
            self.done[key] = run_dir
        return self.done[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("learning"))


@pytest.mark.parametrize("objective", ["clip", "siglip"])
def test_matched_pairs_teach_colour_and_shuffled_pairs_do_not(runs, objective):
    matched = zeroshot(runs.get(objective))["colour"]
    shuffled = zeroshot(runs.get(objective, SHUFFLED))["colour"]
    assert matched >= 0.9, f"{objective}: colour zero-shot {matched:.3f} on held-out scenes"
    assert shuffled < CHANCE + 0.15, f"{objective} learned colour from shuffled pairs: {shuffled:.3f}"
    assert matched - shuffled >= 0.5


def test_an_interrupted_run_resumes_to_the_same_accuracy(runs, tmp_path):
    reference = runs.get("clip")
    steps = SETTINGS["clip"][0]
    out = tmp_path / "interrupted"

    def sigterm_midway():
        deadline = time.monotonic() + 600
        while max(logged_steps(out), default=0) < steps // 2:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    # run_training handles SIGTERM while it trains; should the signal come late, it must not end the test session.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        threading.Thread(target=sigterm_midway, daemon=True).start()
        with pytest.raises(GracefulStop):
            run_training(learning_config("clip"), out, progress=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    stopped = int(latest_checkpoint(out / "checkpoints").name.removeprefix("step-"))
    assert steps // 2 <= stopped < steps
    run_training(learning_config("clip"), out, progress=False)

    resumed, uninterrupted = zeroshot(out), zeroshot(reference)
    assert resumed == uninterrupted and resumed["colour"] >= 0.9
    weights = load_file(latest_checkpoint(out / "checkpoints") / "model.safetensors")
    expected = load_file(latest_checkpoint(reference / "checkpoints") / "model.safetensors")
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
