"""DeepSeek-VL text mixture: the ratio of text-only batches is honoured (and resumes), and the logged
held-out text loss equals a direct per-example computation."""

import json

import pytest
import torch
import torch.nn.functional as F

from vlalign.config import validate
from vlalign.data.generative import collate_generative, encode_examples, to_example
from vlalign.data.loader import Loader
from vlalign.data.specs import build_source
from vlalign.data.text_mixture import MixtureLoader, text_only_at
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import ConfigError
from vlalign.models import build_model
from vlalign.recipes import get_recipe
from vlalign.train import run_training
from vlalign.train.text_retention import HeldoutText

IMAGES, TEXTS = "shapes:n=48,seed=0", "shapes-qa:n=48,seed=3"


def mixture(tokenizer, ratio):
    transform = ImageTransform(16, 3)
    loaders = [Loader(build_source(spec), tokenizer, transform, 4, 48, seed=seed,
                      collate_fn=lambda *a, w=with_image: collate_generative(*a, with_image=w))
               for spec, seed, with_image in ((IMAGES, 0, True), (TEXTS, 1, False))]
    return MixtureLoader(*loaders, ratio)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(build_source(TEXTS).texts(), 300)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5])
def test_ratio_is_honoured_evenly(ratio):
    kinds = [text_only_at(i, ratio) for i in range(1000)]
    assert sum(kinds) == int(1000 * ratio)
    assert all(abs(sum(kinds[:n]) - n * ratio) < 1 for n in range(1, 1000))  # never more than one batch off


def test_mixture_loader_draws_text_batches_at_the_ratio_and_resumes(tokenizer):
    loader = mixture(tokenizer, 0.3)
    batches = iter(loader)
    first = [next(batches) for _ in range(10)]
    assert [b["images"] is None for b in first] == [text_only_at(i, 0.3) for i in range(10)]
    assert loader.text_fraction == pytest.approx(0.3)
    state = loader.state_dict()
    following = [next(batches) for _ in range(4)]
    resumed = mixture(tokenizer, 0.3)
    resumed.load_state_dict(state)
    again = iter(resumed)
    for expected in following:
        got = next(again)
        assert got["keys"] == expected["keys"] and torch.equal(got["text_ids"], expected["text_ids"])


def test_heldout_loss_equals_direct_per_example_computation(tokenizer):
    torch.manual_seed(0)
    cfg = get_recipe("lm-pretrain")
    model = build_model(cfg.model, cfg.data.image_size, tokenizer.vocab_size, 48).eval()
    source = build_source("shapes-qa:n=10,seed=9")
    logged = HeldoutText(source, tokenizer, 48, batch_size=4).loss(model)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(source)):
            enc = encode_examples(tokenizer, [to_example(source[i], with_image=False)], 48)
            out = model(None, enc["text_ids"], enc["text_mask"], None)
            for t in enc["target_mask"][0].nonzero()[:, 0].tolist():  # token t is predicted at position P + t - 1
                logits = out.logits[0, out.prefix_len + t - 1]
                total += F.cross_entropy(logits[None], enc["text_ids"][0, t : t + 1], reduction="sum").item()
                count += 1
    assert logged == pytest.approx(total / count, rel=1e-5)


def test_training_logs_text_fraction_and_heldout_loss(tmp_path):
    cfg = get_recipe("lm-pretrain")
    cfg.model.arch, cfg.model.vision.size = "vlm", "vit-micro"
    cfg.data.train, cfg.data.image_size, cfg.data.batch_size = "shapes:n=32,seed=0", 16, 4
    cfg.data.text_mixture, cfg.data.text_ratio, cfg.data.text_heldout = TEXTS, 0.5, "shapes-qa:n=6,seed=9"
    cfg.train.steps, cfg.train.log_every, cfg.train.checkpoint_every = 4, 2, 4
    validate(cfg)
    run_training(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert all("text/heldout_loss" in r for r in rows)
    assert rows[-1]["mix/text_fraction"] == 0.5


def test_mixture_needs_a_generative_vlm():
    cfg = get_recipe("shapes-clip")
    cfg.data.text_mixture, cfg.data.text_ratio = TEXTS, 0.3
    with pytest.raises(ConfigError, match="text_ratio"):
        validate(cfg)
