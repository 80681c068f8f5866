"""Word-swap hard-negative captions (vlalign.data.negatives) and their path through collate."""

import numpy as np
import torch
import pytest

from vlalign.data.loader import collate
from vlalign.data.negatives import negatives_for, word_swap_negative
from vlalign.data.shapes import COLOURS, SHAPES, ShapesWorld
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform


def differing_words(a: str, b: str) -> list[tuple[str, str]]:
    words_a, words_b = a.replace(",", "").split(), b.replace(",", "").split()
    assert len(words_a) == len(words_b)
    return [(x, y) for x, y in zip(words_a, words_b) if x != y]


@pytest.mark.parametrize("kind, vocabulary", [("shape", (*SHAPES, "rectangle", "oval", "pentagon")),
                                              ("colour", (*COLOURS, "black", "brown", "pink", "grey"))])
def test_a_negative_replaces_exactly_one_word_by_another_of_its_kind(kind, vocabulary):
    world = ShapesWorld(200, seed=3)
    replaced = set()
    for i in range(len(world)):
        caption = world.caption(i)
        negative = word_swap_negative(caption, (kind,), np.random.default_rng(i))
        [(old, new)] = differing_words(caption, negative)
        assert old in vocabulary and new in vocabulary and new != old
        replaced.add(old)
    assert len(replaced) >= 6  # every kind of word gets swapped, not just the first of the list


def test_size_and_relation_swaps_use_the_opposite_word():
    rng = np.random.default_rng(0)
    assert word_swap_negative("a small red circle on the left", ("size",), rng) == "a large red circle on the left"
    assert word_swap_negative("a red circle above a blue star", ("relation",), rng) == "a red circle below a blue star"
    assert word_swap_negative("A picture", ("colour", "shape"), rng) is None


def test_capitalisation_is_kept():
    negative = word_swap_negative("Red circle", ("colour",), np.random.default_rng(0))
    first, rest = negative.split(" ", 1)
    assert first[0].isupper() and first.lower() != "red" and rest == "circle"


def test_negatives_depend_on_seed_and_key_only():
    captions = ["a small red circle on the left", "nothing to swap here", "a large blue star at the top"]
    keys = ["a", "b", "c"]
    first, valid = negatives_for(captions, keys, ("shape", "colour"), seed=0)
    assert valid == [True, False, True] and first[1] == captions[1]
    # The same sample in another batch position, next to other samples: the same negative.
    again, _ = negatives_for(captions[::-1], keys[::-1], ("shape", "colour"), seed=0)
    assert again[::-1] == first
    other_seeds = {tuple(negatives_for(captions, keys, ("shape", "colour"), seed=s)[0]) for s in range(8)}
    assert len(other_seeds) > 1


def test_collate_adds_tokenised_negatives_and_drops_those_truncated_away():
    world = ShapesWorld(16, seed=0)
    tokenizer = train_tokenizer(world.captions(), vocab_size=300)
    batch = collate(world, list(range(8)), tokenizer, 64, ImageTransform(32, 3), negative_kinds=("shape",))
    assert batch["negative_ids"].shape == batch["text_ids"].shape
    assert batch["negative_valid"].all()  # every shapes caption names a shape
    assert (batch["negative_ids"] != batch["text_ids"]).any(dim=1).all()
    # At 12 tokens some swaps fall past the end: those negatives equal their captions and are invalid.
    short = collate(world, list(range(8)), tokenizer, 12, ImageTransform(32, 3), negative_kinds=("shape",))
    same = (short["negative_ids"] == short["text_ids"]).all(dim=1)
    assert same.any() and (short["negative_valid"] == ~same).all()
    plain = collate(world, list(range(8)), tokenizer, 64, ImageTransform(32, 3))
    assert "negative_ids" not in plain


def test_fine_tuning_a_clip_run_keeps_its_tokenizer_and_trains_with_negatives(trained_tiny_run, tmp_path):
    """The NegCLIP/SVLC setting: start from a trained CLIP run, fine-tune with hard negatives. The copied
    text tower's vocabulary comes with it, even though the new data would train another tokenizer."""
    from safetensors.torch import load_file

    from vlalign.checkpoint import latest_checkpoint
    from vlalign.recipes import get_recipe
    from vlalign.train import run_training

    cfg = get_recipe("tiny")
    cfg.data.train = "shapes:n=64,seed=9,objects=3"  # other captions: a fresh BPE would differ
    cfg.model.init_from = [str(trained_tiny_run)]
    cfg.objective.hard_negatives = ["shape", "colour"]
    cfg.train.steps, cfg.train.checkpoint_every = 2, 2
    run_training(cfg, tmp_path / "ft", progress=False)
    assert (tmp_path / "ft" / "tokenizer.json").read_text() == (trained_tiny_run / "tokenizer.json").read_text()
    before = load_file(latest_checkpoint(trained_tiny_run / "checkpoints") / "model.safetensors")
    after = load_file(latest_checkpoint(tmp_path / "ft" / "checkpoints") / "model.safetensors")
    key = "text.token_embedding.weight"
    assert key in before and before[key].shape == after[key].shape and not torch.equal(before[key], after[key])
