"""SurgLaVi: injected one-sided noise, the dual-modality filter that finds it, and hierarchical captions."""

import math

import numpy as np
import pytest
import torch

from vlalign.curate.dual_filter import (
    dual_filter,
    image_quality,
    robust_z,
    text_quality,
)
from vlalign.data.corruption import CorruptedPairs, garble
from vlalign.data.hierarchy import LevelCaptions, object_caption, scene_caption
from vlalign.data.shapes import Scene, ShapeObject, ShapesWorld
from vlalign.data.specs import build_source
from vlalign.errors import DataError


@pytest.fixture(scope="module")
def world():
    return ShapesWorld(120, seed=0)


def test_corruption_breaks_one_side_of_disjoint_chosen_pairs(world):
    noisy = CorruptedPairs(world, 0.1, 0.2, seed=3)
    assert len(noisy.noisy_images) == 12 and len(noisy.noisy_texts) == 24
    assert not set(noisy.noisy_images) & set(noisy.noisy_texts)
    i, t = noisy.noisy_images[0], noisy.noisy_texts[0]
    assert noisy[i].caption == world[i].caption and not np.array_equal(noisy[i].image, world[i].image)
    assert np.array_equal(noisy[t].image, world[t].image) and noisy[t].caption != world[t].caption
    assert sorted(noisy[t].caption.split()) != sorted(world[t].caption.split())  # fillers were added
    assert noisy.captions()[t] == noisy[t].caption  # the tokenizer's corpus sees what training sees
    clean = next(k for k in range(len(world)) if k not in noisy.noisy_images + noisy.noisy_texts)
    assert noisy[clean].caption == world[clean].caption


def test_garble_keeps_every_word_and_adds_two_fillers():
    out = garble("a small red circle on the left", np.random.default_rng(0)).split()
    assert len(out) == 9 and set("a small red circle on the left".split()) <= set(out)


def test_image_quality_orders_pictures_above_noise_and_blank(world):
    picture = world[0].image
    noise = np.random.default_rng(0).integers(0, 256, picture.shape).astype(np.uint8)
    assert image_quality(picture) > 1.0 > image_quality(noise)
    assert image_quality(np.zeros_like(picture)) == -math.inf


def test_text_quality_is_the_leave_one_out_bigram_log_probability():
    captions = ["a red circle", "a red circle", "a blue square", "circle red a"]
    scores = text_quality(captions)
    # caption 0 under the three others: its bigrams occur 2, 1, 1, 1 times there, after words occurring 3, 3, 2, 2
    # times (<s>, a, red, circle); add-one over a vocabulary of 7 words.
    counts = {("<s>", "a"): (2, 3), ("a", "red"): (1, 3), ("red", "circle"): (1, 2), ("circle", "</s>"): (1, 2)}
    expected = sum(math.log((b + 1) / (u + 7)) for b, u in counts.values()) / 4
    assert scores[0].item() == pytest.approx(expected)
    assert scores[3] < scores[0]  # the shuffled caption is the least fluent


def test_robust_z_uses_median_and_mad():
    z = robust_z(torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert z[2] == 0 and z[4] > 50 and z[1].item() == pytest.approx(-1 / 1.4826)


def test_dual_filter_drops_both_kinds_of_noise_and_keeps_clean_pairs(world):
    noisy = CorruptedPairs(world, 0.1, 0.1, seed=1)
    result = dual_filter(noisy, max_z=3.0)
    assert not result.kept[noisy.noisy_images].any() and not result.kept[noisy.noisy_texts].any()
    clean = torch.ones(len(world), dtype=torch.bool)
    clean[noisy.noisy_images + noisy.noisy_texts] = False
    assert result.kept[clean].float().mean() > 0.95
    dropped = result.dropped_by(3.0)
    assert dropped["image"] >= 12 and dropped["text"] >= 12


def test_dualfilter_spec_is_a_source_of_the_kept_pairs():
    source = build_source("dualfilter:max_z=3:corrupt:image=0.1,text=0.1:shapes:n=60,seed=0")
    assert len(source) == int(source.result.kept.sum()) <= 48
    assert source.captions() == [source[i].caption for i in range(len(source))]
    with pytest.raises(DataError, match="expected"):
        build_source("dualfilter:shapes")


def test_caption_levels_describe_one_scene_from_coarse_to_fine():
    scene = Scene((ShapeObject("star", "red", "small", 0, 0), ShapeObject("circle", "blue", "large", 1, 1)))
    rng = np.random.default_rng(0)
    assert "two shapes" in scene_caption(scene, rng)
    assert sorted(object_caption(scene, rng).replace(" and ", ", ").split(", ")) == ["a circle", "a star"]
    single = Scene((ShapeObject("star", "red", "small", 0, 0),))
    assert "a single shape" in scene_caption(single, rng) and object_caption(single, rng) == "a star"


def test_levels_spec_recaptions_without_changing_the_images(world):
    for level in ("scene", "object", "attribute"):
        source = build_source(f"levels:{level}:shapes:n=120,seed=0")
        assert np.array_equal(source[5].image, world[5].image)
        assert source.captions()[:4] == [source[i].caption for i in range(4)]
    assert build_source("levels:attribute:shapes:n=120,seed=0")[5].caption == world[5].caption
    with pytest.raises(DataError, match="level"):
        LevelCaptions(world, "pixel")
