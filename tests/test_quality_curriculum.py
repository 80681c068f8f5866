"""SAIL-VL quality curriculum: the high-quality share grows over the run, and the loader keeps its order."""

import pytest
import torch
from safetensors.torch import save_file

from vlalign.config import RunConfig, apply_overrides
from vlalign.data.curriculum import QualityCurriculum, load_scores
from vlalign.data.loader import Loader
from vlalign.data.shapes import ShapesWorld
from vlalign.data.specs import build_source
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def world():
    return ShapesWorld(40, seed=0)


def test_the_high_quality_share_ramps_from_start_to_end(world):
    scores = torch.arange(40.0)  # sample i has quality i: the top half is 20..39
    curriculum = QualityCurriculum(world, scores, 4000, start=0.0, end=1.0, top=0.5)
    assert curriculum.high_quality == list(range(20, 40))
    drawn = torch.tensor([curriculum.index(k) for k in range(4000)])
    good = (drawn >= 20).float()
    # P(top half) = p + (1 - p) / 2 with p the ramp: 0.5 at the start, 1 at the end, 0.75 on average.
    first, last = good[:400].mean().item(), good[-400:].mean().item()
    assert first == pytest.approx(0.525, abs=0.06) and last == pytest.approx(0.975, abs=0.03)
    assert good.mean().item() == pytest.approx(0.75, abs=0.03)
    assert curriculum.index(123) == QualityCurriculum(world, scores, 4000).index(123)  # a function of the position
    assert curriculum[7].key == world[curriculum.index(7)].key


def test_a_flat_schedule_with_start_equal_end_is_constant_weighting(world):
    curriculum = QualityCurriculum(world, torch.arange(40.0), 100, start=0.3, end=0.3)
    assert {curriculum.share(k) for k in (0, 50, 99)} == {0.3}


def test_sequential_order_reads_positions_in_order_across_epochs(world):
    tokenizer = train_tokenizer(world.captions(), 128)
    loader = Loader(world, tokenizer, ImageTransform(32, 3), 8, 16, order="sequential")
    batches = iter(loader)
    keys = [next(batches)["keys"] for _ in range(6)]  # 5 batches per epoch, then the next epoch starts over
    assert keys[0] == [world[i].key for i in range(8)] and keys[4] == [world[i].key for i in range(32, 40)]
    assert keys[5] == keys[0]


def test_curriculum_spec_with_dual_scores_and_its_config_rule(world, tmp_path):
    source = build_source("curriculum:samples=64,top=0.25:corrupt:image=0.25:shapes:n=40,seed=0")
    noisy = set(source.source.noisy_images)
    assert len(source) == 64 and not noisy & set(source.high_quality)
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="data.order=sequential"):
        apply_overrides(cfg, ["data.train=curriculum:samples=64:shapes:n=40,seed=0"])
    apply_overrides(cfg, ["data.train=curriculum:samples=64:shapes:n=40,seed=0", "data.order=sequential"])


def test_score_files_must_match_the_source(tmp_path):
    save_file({"score": torch.tensor([0.1, float("nan"), 0.3])}, tmp_path / "s.safetensors")
    scores = load_scores(str(tmp_path / "s.safetensors"), 3)
    assert scores[1] == float("-inf")
    with pytest.raises(DataError, match="3 samples|for a source of 4"):
        load_scores(str(tmp_path / "s.safetensors"), 4)
    with pytest.raises(DataError, match="samples=N"):
        build_source("curriculum:top=0.5:shapes:n=40,seed=0")
