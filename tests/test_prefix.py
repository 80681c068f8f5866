"""Prefix conditioning (dataset-type prefix tokens), UniCL's label-aware loss, and the labels/union sources."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlalign.config import ModelConfig, RunConfig, apply_overrides
from vlalign.data.loader import collate
from vlalign.data.mixture import LabelCaptions, Union
from vlalign.data.sample import Sample
from vlalign.data.specs import build_source
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import ConfigError, DataError
from vlalign.models import build_model
from vlalign.models.prefix import CAPTION, LABEL
from vlalign.objectives.contrastive import clip_loss
from vlalign.objectives.unicl import unicl_loss, unicl_targets

LABELS = torch.tensor([3, 3, 3, 5, 5, 3, -1])
TYPES = torch.tensor([LABEL, LABEL, CAPTION, LABEL, CAPTION, LABEL, LABEL])


def test_unicl_targets_equal_the_rule_written_as_a_loop():
    targets = unicl_targets(LABELS, TYPES)
    n = len(LABELS)
    for i in range(n):
        for j in range(n):
            shared = (TYPES[i] == LABEL and TYPES[j] == LABEL and LABELS[i] >= 0 and LABELS[i] == LABELS[j])
            assert targets[i, j].item() == (i == j or bool(shared)), (i, j)
    assert targets[0, 1] and targets[0, 5] and not targets[0, 2] and not targets[3, 4]  # captions stay apart


def test_unicl_loss_equals_explicit_loop():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(7, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(7, 8, generator=g), dim=-1)
    scale = 6.0
    targets = unicl_targets(LABELS, TYPES)
    total = 0.0
    for i in range(7):
        row = [scale * float(image[i] @ text[j]) for j in range(7)]
        col = [scale * float(image[j] @ text[i]) for j in range(7)]
        row_lse, col_lse = math.log(sum(map(math.exp, row))), math.log(sum(map(math.exp, col)))
        positives = [k for k in range(7) if targets[i, k]]
        total += -sum(row[k] - row_lse for k in positives) / len(positives)  # image i -> its positive texts
        total += -sum(col[k] - col_lse for k in positives) / len(positives)  # text i -> its positive images
    loss = unicl_loss(image, text, torch.tensor(scale), LABELS, TYPES)
    assert loss.item() == pytest.approx(total / 14, rel=1e-5)


def test_unicl_with_captions_only_is_clip():
    g = torch.Generator().manual_seed(1)
    image, text = F.normalize(torch.randn(5, 4, generator=g), dim=-1), F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    labels = torch.tensor([1, 1, 1, 2, 2])  # a shapes caption's label is its first object: never shared
    loss = unicl_loss(image, text, torch.tensor(3.0), labels, torch.zeros(5, dtype=torch.long))
    assert loss.item() == pytest.approx(clip_loss(image, text, torch.tensor(3.0)).item(), rel=1e-6)


def prefixed_model(prefix_tokens=2):
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.embed_dim = "vit-micro", "text-micro", 16
    cfg.text.prefix_tokens = prefix_tokens
    torch.manual_seed(0)
    return build_model(cfg, image_size=16, vocab_size=50, context_length=8)


def text_batch():
    ids = torch.randint(4, 50, (4, 8), generator=torch.Generator().manual_seed(2))
    ids[:, 5:] = 0
    return ids, ids != 0


def test_prefix_conditions_the_text_and_captions_are_the_default():
    model = prefixed_model().eval()
    ids, mask = text_batch()
    captions = model.encode_text(ids, mask, torch.full((4,), CAPTION))
    labels = model.encode_text(ids, mask, torch.full((4,), LABEL))
    assert torch.equal(model.encode_text(ids, mask), captions)  # zero-shot reads text as captions
    assert not torch.allclose(captions, labels, atol=1e-3)
    mixed = model.encode_text(ids, mask, torch.tensor([CAPTION, LABEL, CAPTION, LABEL]))
    torch.testing.assert_close(mixed[0::2], captions[0::2])
    torch.testing.assert_close(mixed[1::2], labels[1::2])
    # padding stays inert behind a prefix, and the tokens returned are the text's own L positions
    torch.testing.assert_close(model.encode_text(ids[:, :5], mask[:, :5]), captions, atol=1e-6, rtol=0)
    features = model.text_features(ids, mask)
    assert features.tokens.shape[1] == 8 and torch.equal(features.mask, mask)
    assert prefixed_model(0).text_prefix is None


def test_prefix_changes_the_text_exactly_like_prepended_embeddings():
    """Reference: put the prefix vectors into the token-embedding table as two extra words, prepend
    their ids, and run the plain tower. It must give the same pooled text feature."""
    model = prefixed_model(prefix_tokens=2).eval()
    ids, mask = text_batch()
    ours = model.text_features(ids, mask, torch.full((4,), LABEL)).pooled
    text = model.text
    table = torch.cat([text.token_embedding.weight.detach(), model.text_prefix.embedding[LABEL].detach()])
    reference_tower = type(text)(table.shape[0], text.context_length, text.width, 2, 2, pool=text.pool).eval()
    reference_tower.load_state_dict({**text.state_dict(), "token_embedding.weight": table})
    prefix_ids = torch.tensor([50, 51]).expand(4, -1)
    reference = reference_tower(torch.cat([prefix_ids, ids], 1), torch.cat([torch.ones(4, 2, dtype=torch.bool), mask], 1))
    torch.testing.assert_close(ours, reference.pooled, atol=1e-5, rtol=0)


def test_both_prefixes_train_from_one_batch():
    model = prefixed_model()
    ids, mask = text_batch()
    out = model(torch.randn(4, 3, 16, 16), ids, mask, text_types=torch.tensor([CAPTION, LABEL, LABEL, CAPTION]))
    loss = unicl_loss(out.image_embeds, out.text_embeds, out.logit_scale, torch.tensor([0, 1, 1, 2]),
                      torch.tensor([CAPTION, LABEL, LABEL, CAPTION]))
    loss.backward()
    grad = model.text_prefix.embedding.grad  # [2 types, P, D]
    assert grad[CAPTION].abs().sum() > 0 and grad[LABEL].abs().sum() > 0


class Labelled:
    """A two-class source of constant images."""

    name, classes, channel_names = "toy", ["red circle", "blue star"], ("red", "green", "blue")

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return Sample(f"toy-{i}", np.full((3, 24, 24), i, np.uint8), f"caption {i}", label=i % 2)


def test_label_captions_and_union():
    labels = LabelCaptions(Labelled())
    assert [labels[i].caption for i in range(4)] == ["a red circle", "a blue star"] * 2
    assert labels[1].meta["text_type"] == "label" and labels[1].key == "toy-1"
    union = Union([Labelled(), labels])
    assert len(union) == 8
    assert [union[i].caption for i in range(8)] == [f"caption {i}" for i in range(4)] + ["a red circle", "a blue star"] * 2
    assert union.captions()[-2:] == ["a red circle", "a blue star"]
    tokenizer = train_tokenizer(union.captions(), 64)
    batch = collate(union, [0, 5, 2, 6], tokenizer, 8, ImageTransform(24, 3), with_text_types=True)
    assert batch["text_types"].tolist() == [CAPTION, LABEL, CAPTION, LABEL]
    assert batch["labels"].tolist() == [0, 1, 0, 0]
    assert "text_types" not in collate(union, [0, 5], tokenizer, 8, ImageTransform(24, 3))


def test_specs_and_config_errors():
    source = build_source("union:shapes:n=10,seed=0;labels:shapes:n=5,seed=1,objects=1")
    assert len(source) == 15 and source[12].meta["text_type"] == "label"
    assert source[12].caption == "a " + source[12].meta["colour"] + " " + source[12].meta["shape"]
    assert source.cfg.max_objects == 3  # helpers come from the first source
    with pytest.raises(DataError, match="at least two"):
        build_source("union:shapes:n=10,seed=0")
    with pytest.raises(DataError, match="share their channels"):
        build_source("union:shapes:n=10,seed=0;shapes:n=10,seed=0,channels=stains")
    with pytest.raises(ConfigError, match="vlalign text tower"):
        apply_overrides(RunConfig(), ["model.text.prefix_tokens=1", "model.text.tower=hf:x"])
    with pytest.raises(ConfigError, match="cache_dir"):
        apply_overrides(RunConfig(), ["objective.name=unicl", "data.cache_dir=/tmp/c"])


def test_a_prefix_run_feeds_text_types_from_the_union(tmp_path, tiny_cfg):
    import json

    from vlalign.checkpoint import latest_checkpoint, load_checkpoint
    from vlalign.train import run_training

    cfg = apply_overrides(tiny_cfg, ["data.train=union:shapes:n=48,seed=0;labels:shapes:n=48,seed=5,objects=1",
                                     "model.text.prefix_tokens=1", "objective.name=unicl", "train.steps=2"])
    run_training(cfg, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["label_fraction"] < 1 for r in records)  # both kinds of text in every batch
    tensors, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert tensors["text_prefix.embedding"].shape == (2, 1, 64)
