"""CoOp prompt context and PCB's class-balanced active selection (issue 13, item 6)."""

import pytest
import torch

from vlalign.adapt.active_selection import entropy, select, select_class_balanced
from vlalign.adapt.prompt_learning import prompt_logits, tokenize_class_names, train_prompt_context
from vlalign.config import apply_overrides
from vlalign.data.tokenizer import train_tokenizer
from vlalign.models import build_model
from vlalign.models.prompt_context import PromptContext
from vlalign.recipes import get_recipe

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def frozen_model():
    cfg = get_recipe("tiny")
    tokenizer = train_tokenizer([f"a photo of the {c} on the left" for c in CLASSES] * 4, 300)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.image_size, tokenizer.vocab_size, cfg.data.context_length).eval()
    return model, tokenizer, cfg


def test_context_starts_as_the_hand_written_prompt(frozen_model):
    model, tokenizer, cfg = frozen_model
    context = PromptContext.from_text(model, tokenizer, "a photo of the")
    ids, mask = tokenize_class_names(tokenizer, CLASSES, cfg.data.context_length)
    with torch.no_grad():
        learned = context.class_embeddings(model, ids, mask)
        full_ids, full_mask = tokenizer([f"a photo of the {c}" for c in CLASSES], cfg.data.context_length)
        written = model.encode_text(full_ids, full_mask)
    torch.testing.assert_close(learned, written, atol=1e-5, rtol=1e-5)


def test_only_the_context_trains(frozen_model):
    model, tokenizer, cfg = frozen_model
    context = PromptContext.from_text(model, tokenizer, "a photo of the")
    ids, mask = tokenize_class_names(tokenizer, CLASSES, cfg.data.context_length)
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(12, model.image_head.proj.out_features, generator=g), dim=-1)
    labels = torch.arange(12) % 3
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    start = context.context.detach().clone()
    with torch.no_grad():
        loss0 = torch.nn.functional.cross_entropy(prompt_logits(model, context, ids, mask, images), labels)
    train_prompt_context(model, context, ids, mask, images, labels, steps=30, lr=1e-2)
    with torch.no_grad():
        loss1 = torch.nn.functional.cross_entropy(prompt_logits(model, context, ids, mask, images), labels)
    assert loss1 < loss0 and not torch.equal(context.context, start)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_pcb_fills_the_rarest_class_first():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    pseudo = torch.tensor([0, 0, 0, 1, 1, 2])
    counts = torch.tensor([0, 2, 1])  # class 0 rarest, then 2, then 1
    chosen = select_class_balanced(torch.arange(6), scores, pseudo, counts, budget=4)
    # counts [0,2,1]: class 0 -> sample 0; [1,2,1] tie of 0 and 2 -> lowest id, class 0 -> sample 1;
    # [2,2,1]: class 2 -> sample 5; [2,2,2]: class 0 -> sample 2
    assert chosen.tolist() == [0, 1, 5, 2]


def test_pcb_balances_where_uncertainty_does_not():
    g = torch.Generator().manual_seed(0)
    K, N = 4, 400
    labels = torch.arange(N) % K
    logits = torch.randn(N, K, generator=g)
    logits[labels == 0] *= 0.05  # class 0 is the confusing one: its samples have near-uniform predictions
    logits[torch.arange(N), labels] += torch.where(labels == 0, 0.0, 3.0)  # the others are predicted well
    probs = logits.softmax(1)
    counts = torch.zeros(K, dtype=torch.long)
    uncertain = select("entropy", torch.arange(N), probs, counts, 20, g)
    balanced = select("pcb", torch.arange(N), probs, counts, 20, g)
    assert torch.bincount(labels[uncertain], minlength=K).max() >= 15  # uncertainty piles into class 0
    assert torch.bincount(probs.argmax(1)[balanced], minlength=K).tolist() == [5, 5, 5, 5]
    assert entropy(probs[uncertain]).min() >= entropy(probs).sort(descending=True).values[19] - 1e-6


def test_random_selection_is_reproducible_and_unknown_strategy_errs():
    probs = torch.full((50, 2), 0.5)
    counts = torch.zeros(2, dtype=torch.long)
    a = select("random", torch.arange(50), probs, counts, 10, torch.Generator().manual_seed(3))
    b = select("random", torch.arange(50), probs, counts, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and len(set(a.tolist())) == 10
    with pytest.raises(ValueError, match="badge"):
        select("badge", torch.arange(50), probs, counts, 10, torch.Generator())
