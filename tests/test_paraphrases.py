"""Positive paraphrases (vlalign.data.paraphrases), their path through collate and the multi-positive CLIP loss."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from vlalign.config import ObjectiveConfig, apply_overrides
from vlalign.data.loader import collate
from vlalign.data.paraphrases import converse_paraphrase, paraphrases_for
from vlalign.data.sample import Sample
from vlalign.data.shapes import COLOURS, SHAPES, SIZES, ShapesWorld, true_relations
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import ConfigError
from vlalign.objectives import build_objective
from vlalign.objectives.contrastive import clip_loss
from vlalign.recipes import get_recipe
from vlalign.train.step import forward_backward

_PHRASE = rf"(?:{'|'.join(SIZES)}) (?:{'|'.join(COLOURS)}) (?:{'|'.join(SHAPES)})"
_OBJECT = re.compile(rf"\b({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b")
_RELATION = re.compile(rf"a ({_PHRASE}) (to the left of|to the right of|above|below) a ({_PHRASE})")


def objects_named(text: str) -> list[tuple[str, str, str]]:
    return sorted(_OBJECT.findall(text))


def test_a_scene_paraphrase_names_the_same_objects_with_a_true_relation():
    world = ShapesWorld(120, seed=4)
    samples = [world[i] for i in range(len(world))]
    texts, valid = paraphrases_for(samples, seed=0)
    assert sum(valid) >= 110  # only a scene whose every draw repeats the caption gets none
    templates_changed = relations_checked = 0
    for sample, text, ok in zip(samples, texts, valid):
        if not ok:
            assert text == sample.caption
            continue
        scene = sample.meta["scene"]
        assert text != sample.caption
        assert objects_named(text) == objects_named(sample.caption) == sorted(
            (o.size, o.colour, o.shape) for o in scene.objects)
        match = _RELATION.search(text)
        if len(scene.objects) > 1:  # the stated relation holds between the named objects
            a, rel, b = match.groups()
            by_phrase = {o.phrase: o for o in scene.objects}
            if a != b:  # two identical objects: either reading is the same sentence
                assert rel in true_relations(by_phrase[a], by_phrase[b])
                relations_checked += 1
        prefix = lambda t: t[:_OBJECT.search(t).start()]
        templates_changed += prefix(text) != prefix(sample.caption)
    assert relations_checked >= 60 and templates_changed >= 20


def test_paraphrases_depend_on_seed_and_key_only():
    world = ShapesWorld(12, seed=1)
    samples = [world[i] for i in range(12)]
    first, _ = paraphrases_for(samples, seed=3)
    again, _ = paraphrases_for(samples[::-1], seed=3)  # other batch positions and neighbours
    assert again[::-1] == first
    assert first == paraphrases_for([world[i] for i in range(12)], seed=3)[0]  # re-read: a resumed run
    assert {tuple(paraphrases_for(samples, seed=s)[0]) for s in range(4)} != {tuple(first)}


@pytest.mark.parametrize("caption, expected", [
    ("a small red circle to the left of a large blue star", "a large blue star to the right of a small red circle"),
    ("A cat above the dog, and a bird at the top", "The dog below a cat, and a bird at the top"),
    ("a picture of a red circle below a blue star", "a picture of a blue star above a red circle"),
    ("a green star at the top", None),  # no relation between two objects
    ("a red circle to the left of a blue star in the centre", None),  # where does the second object end?
])
def test_converse_relation_rewrite(caption, expected):
    assert converse_paraphrase(caption) == expected


def test_samples_without_a_scene_use_the_rule_and_are_masked_without_one():
    samples = [Sample("k1", None, "a red circle to the left of a blue star"), Sample("k2", None, "a red circle")]
    texts, valid = paraphrases_for(samples, seed=0)
    assert texts == ["a blue star to the right of a red circle", "a red circle"] and valid == [True, False]


def test_collate_adds_tokenised_paraphrases():
    world = ShapesWorld(16, seed=0)
    tokenizer = train_tokenizer(world.captions(), vocab_size=300)
    batch = collate(world, list(range(8)), tokenizer, 64, ImageTransform(32, 3), paraphrases=True)
    assert batch["paraphrase_ids"].shape == batch["text_ids"].shape
    assert batch["paraphrase_valid"].all() and (batch["paraphrase_ids"] != batch["text_ids"]).any(1).all()
    assert "paraphrase_ids" not in collate(world, list(range(8)), tokenizer, 64, ImageTransform(32, 3))


def embeds(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


@pytest.mark.parametrize("with_negatives", [False, True])
def test_paraphrase_loss_equals_explicit_loop(with_negatives):
    n, scale = 6, torch.tensor(7.0)
    image, text, para, neg = embeds(n, seed=0), embeds(n, seed=1), embeds(n, seed=2), embeds(n, seed=3)
    para_valid = torch.tensor([True, False, True, True, False, True])
    neg_valid = torch.tensor([True, True, False, True, True, True])
    s = lambda a, b: (scale * a @ b).item()
    rows = 0.0
    for i in range(n):  # image -> every caption, valid paraphrase and valid negative; its positives' summed probability
        columns = [s(image[i], text[j]) for j in range(n)] + [s(image[i], para[j]) for j in range(n) if para_valid[j]]
        if with_negatives:
            columns += [s(image[i], neg[j]) for j in range(n) if neg_valid[j]]
        log_z = math.log(sum(math.exp(v) for v in columns))
        positives = [s(image[i], text[i])] + ([s(image[i], para[i])] if para_valid[i] else [])
        rows += -(math.log(sum(math.exp(v) for v in positives)) - log_z)
    cols, count = 0.0, 0
    for texts, valid in ((text, [True] * n), (para, para_valid)):  # text -> image, its own image the target
        for j in range(n):
            if valid[j]:
                column = [s(image[i], texts[j]) for i in range(n)]
                cols += -(column[j] - math.log(sum(math.exp(v) for v in column)))
                count += 1
    expected = 0.5 * (rows / n + cols / count)
    negatives = (neg, neg_valid) if with_negatives else (None, None)
    assert clip_loss(image, text, scale, *negatives, para, para_valid).item() == pytest.approx(expected, rel=1e-5)


def test_without_paraphrases_the_clip_objective_is_plain_clip_bit_for_bit():
    from distributed_scenarios import global_batch, micro_model

    batch = global_batch(size=8)
    objective = build_objective(ObjectiveConfig(name="clip"))
    out = micro_model()(*[batch[k] for k in ("images", "text_ids", "text_mask", "channel_ids")])
    loss, _ = objective(out, batch)
    assert torch.equal(loss, clip_loss(out.image_embeds, out.text_embeds, out.logit_scale))
    assert out.paraphrase_embeds is None


def paraphrase_batch(size=16):
    from distributed_scenarios import global_batch, random_captions

    batch = global_batch(size=size, negatives=True)
    ids = random_captions(torch.Generator().manual_seed(7), size)
    return batch | {"paraphrase_ids": ids, "paraphrase_mask": ids != 0,
                    "paraphrase_valid": torch.arange(size) % 4 != 1}


def test_grad_cache_with_paraphrases_and_negatives_equals_one_pass():
    from distributed_scenarios import gradients, micro_model

    objective = build_objective(ObjectiveConfig(name="clip"))
    results = []
    for accum in (1, 4):
        model = micro_model()
        loss, _ = forward_backward(model, objective, paraphrase_batch(), accum)
        results.append((loss, gradients(model)))
    (loss, grads), (cached_loss, cached_grads) = results
    assert abs(cached_loss.item() - loss.item()) <= 1e-6
    assert grads["text.token_embedding.weight"].abs().sum() > 0
    for key in grads:
        torch.testing.assert_close(cached_grads[key], grads[key], atol=1e-5, rtol=0, msg=key)


def test_config_needs_a_softmax_contrastive_objective():
    cfg = apply_overrides(get_recipe("tiny"), ["objective.positive_paraphrases=true"])
    assert cfg.objective.positive_paraphrases
    with pytest.raises(ConfigError, match="positive_paraphrases"):
        apply_overrides(get_recipe("tiny"), ["objective.positive_paraphrases=true", "objective.name=siglip"])
