"""Tiny LMs: masked-LM pre-training of the text tower, and a CLIP run starting from it."""

import json

import torch

from vlalign.checkpoint import latest_checkpoint, load_checkpoint
from vlalign.config import validate
from vlalign.data.specs import build_source
from vlalign.data.tokenizer import train_tokenizer
from vlalign.models.cross_modal import NUM_SPECIAL
from vlalign.models.text import TextTransformer
from vlalign.models.text_mlm import MaskedTextModel
from vlalign.objectives import build_objective
from vlalign.recipes import get_recipe
from vlalign.train import run_training
from vlalign.train.setup import build_components


def test_masked_lm_learns_a_fixed_batch_and_predicts_only_word_tokens():
    torch.manual_seed(0)
    source = build_source("shapes:n=16,seed=0")
    tokenizer = train_tokenizer([source[i].caption for i in range(16)], 120)
    ids, mask = tokenizer([source[i].caption for i in range(16)], 24)
    model = MaskedTextModel(TextTransformer(tokenizer.vocab_size, 24, 32, 1, 2, pool="mean"), tokenizer.vocab_size)
    cfg = get_recipe("text-mlm")
    objective = build_objective(cfg.objective)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        out = model(None, ids, mask)
        assert bool((out.targets >= NUM_SPECIAL).all())  # never [PAD]/[BOS]/[EOS]
        loss, _ = objective(out, {})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5


def test_pretrained_text_tower_starts_the_contrastive_run(tmp_path):
    mlm = get_recipe("text-mlm")
    mlm.data.train, mlm.data.batch_size = "shapes:n=64,seed=6", 16
    mlm.model.text.size, mlm.model.text.vocab_size, mlm.data.context_length = "text-micro", 200, 24
    mlm.train.steps, mlm.train.log_every, mlm.train.checkpoint_every = 3, 1, 3
    run_training(validate(mlm), tmp_path / "mlm", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "mlm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all("loss/mlm" in r for r in rows)

    clip = get_recipe("tiny")
    clip.model.text.vocab_size, clip.data.context_length = 200, 24
    clip.model.init_from, clip.model.init_modules = [str(tmp_path / "mlm")], ["text"]
    parts = build_components(validate(clip), tmp_path / "clip")
    saved, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "mlm" / "checkpoints"))
    for name, tensor in parts.model.text.state_dict().items():
        assert torch.equal(tensor, saved[f"text.{name}"]), name
    assert not any(name.startswith("mlm_head") for name in parts.model.state_dict())
    assert (tmp_path / "clip" / "tokenizer.json").read_text() == (tmp_path / "mlm" / "tokenizer.json").read_text()
