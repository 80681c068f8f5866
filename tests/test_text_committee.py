"""Tiny LMs' soft committee: K independent shallow text towers whose outputs are averaged."""

import pytest
import torch

from vlalign.config import ModelConfig, apply_overrides, validate
from vlalign.errors import ConfigError
from vlalign.models.factory import build_model, build_text
from vlalign.models.text_committee import TextCommittee
from vlalign.recipes import get_recipe

VOCAB, CONTEXT = 40, 12


def committee_config(k: int, depth: int, pool: str = "eot") -> ModelConfig:
    cfg = ModelConfig()
    cfg.text.size, cfg.text.committee, cfg.text.depth, cfg.text.pool = "text-micro", k, depth, pool
    return cfg


def tokens(batch: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, CONTEXT + 1, (batch,), generator=g)
    mask = torch.arange(CONTEXT)[None] < lengths[:, None]  # [B, L] right-padded
    ids = torch.randint(4, VOCAB, (batch, CONTEXT), generator=g) * mask
    return ids, mask


@pytest.mark.parametrize("pool, pooled_only", [("eot", False), ("eot", True), ("mean", False)])
def test_committee_output_is_the_mean_of_its_members(pool, pooled_only):
    torch.manual_seed(0)
    committee = build_text(committee_config(3, 1, pool), VOCAB, CONTEXT)
    assert isinstance(committee, TextCommittee) and len(committee.members) == 3
    ids, mask = tokens()
    out = committee(ids, mask, pooled_only=pooled_only)
    pooled = torch.zeros_like(out.pooled)
    for member in committee.members:
        pooled += member(ids, mask, pooled_only=pooled_only).pooled / 3
    torch.testing.assert_close(out.pooled, pooled)
    if not pooled_only:
        expected = sum(member(ids, mask).tokens for member in committee.members) / 3
        torch.testing.assert_close(out.tokens, expected)


def test_members_are_independent_shallow_towers():
    torch.manual_seed(0)
    committee = build_text(committee_config(3, 1), VOCAB, CONTEXT)
    single = build_text(committee_config(1, 1), VOCAB, CONTEXT)
    assert all(len(m.transformer.blocks) == 1 for m in committee.members)
    pointers = [{p.data_ptr() for p in m.parameters()} for m in committee.members]
    assert not (pointers[0] & pointers[1] or pointers[0] & pointers[2] or pointers[1] & pointers[2])
    assert sum(p.numel() for p in committee.parameters()) == 3 * sum(p.numel() for p in single.parameters())
    ids, mask = tokens()
    outputs = [m(ids, mask).pooled for m in committee.members]
    assert not torch.allclose(outputs[0], outputs[1])  # initialised independently
    # Each member's gradient through the committee is 1/K of its gradient alone, whatever the others are.
    committee(ids, mask).pooled.square().sum().backward()
    through = [m.token_embedding.weight.grad.clone() for m in committee.members]
    committee.zero_grad()
    mean = torch.stack(outputs).mean(0).detach()
    for k, member in enumerate(committee.members):
        # d/dθ_k sum(mean²) = 2·mean·(1/K)·d(out_k)/dθ_k
        (2 * mean * member(ids, mask).pooled / 3).sum().backward()
        torch.testing.assert_close(member.token_embedding.weight.grad, through[k])


def test_one_tower_with_a_depth_override_and_a_dual_encoder_with_a_committee():
    deep = build_text(committee_config(1, 3), VOCAB, CONTEXT)
    assert len(deep.transformer.blocks) == 3
    torch.manual_seed(0)
    cfg = committee_config(2, 1)
    cfg.vision.size, cfg.vision.patch_size = "vit-micro", 8
    model = build_model(cfg, 16, VOCAB, CONTEXT).eval()
    ids, mask = tokens()
    with torch.no_grad():  # the pooled-only path (embedding) and the training path agree
        full = model(torch.randn(5, 3, 16, 16), ids, mask).text_embeds
        torch.testing.assert_close(model.encode_text(ids, mask, pooled_only=True), full)


@pytest.mark.parametrize("overrides", [["model.text.committee=0"], ["model.text.depth=-1"],
                                       ["model.text.committee=2", "model.fusion.kind=fiber",
                                        "objective.name=fusion"]])
def test_bad_committee_settings_are_refused(overrides):
    with pytest.raises(ConfigError, match="model.text"):
        validate(apply_overrides(get_recipe("shapes-clip"), overrides))
