"""ToMe token merging in the ViT (SimVLG): schedule, identity at r=0, weighted means, the matching itself."""

import pytest
import torch
import torch.nn.functional as F

from vlalign.config import ModelConfig
from vlalign.errors import ConfigError
from vlalign.models import build_model
from vlalign.models.token_merging import (
    TokenMerging,
    bipartite_soft_matching,
    merge_schedule,
    merge_weighted,
)


def tiny_model(**vision):
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.embed_dim, cfg.vision.patch_size = "vit-micro", "text-micro", 16, 4
    for k, v in vision.items():
        setattr(cfg.vision, k, v)
    torch.manual_seed(0)
    return build_model(cfg, image_size=16, vocab_size=50, context_length=8)  # 16 patches + CLS, 2 blocks


def images(b=3):
    return torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def reference_matching(metric: torch.Tensor, r: int):
    """One image, written as loops: each A token (even position, not CLS) finds its most similar B token;
    the r A tokens with the highest best similarity merge (ToMe §3)."""
    a_pos, b_pos = list(range(0, len(metric), 2)), list(range(1, len(metric), 2))
    best = {}
    for i in a_pos[1:]:  # CLS (position 0) never merges
        sims = [F.cosine_similarity(metric[i], metric[j], dim=0).item() for j in b_pos]
        j = max(range(len(b_pos)), key=lambda k: sims[k])
        best[i] = (sims[j], b_pos[j])
    merged = sorted(best, key=lambda i: -best[i][0])[:r]
    return {i: best[i][1] for i in merged}  # A position -> B position it merges into


def test_token_count_after_each_block_follows_the_schedule():
    model = tiny_model(merge_schedule=[3, 5])
    out = model.vision(images())
    assert [h.shape[1] for h in out.intermediates] == [17 - 3, 17 - 3 - 5]
    assert out.tokens.shape[1] == 17 - 8 - 1 and out.token_sizes.shape == (3, 8)
    assert torch.equal(out.token_sizes.sum(1), torch.full((3,), 16.0))  # every patch is counted once

    constant = tiny_model(merge_r=4).vision(images())
    assert [h.shape[1] for h in constant.intermediates] == [13, 9]


def test_r_zero_is_bit_identical_to_no_merging():
    plain, zero = tiny_model(), tiny_model(merge_r=0)
    assert zero.vision.token_merging is None
    explicit = tiny_model()
    explicit.vision.token_merging = TokenMerging([0, 0])  # the merging path with nothing to merge
    x = images()
    a, b, c = plain.vision(x), zero.vision(x), explicit.vision(x)
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.pooled, c.pooled) and torch.equal(a.tokens, c.tokens)


def test_merged_token_is_the_size_weighted_mean_of_its_members():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 4)
    sizes = torch.randint(1, 5, (2, 9, 1)).float()
    match = bipartite_soft_matching(torch.randn(2, 9, 6), r=3)
    merged, merged_sizes = merge_weighted(x, sizes, match)
    a, b, sa, sb = x[:, ::2], x[:, 1::2], sizes[:, ::2], sizes[:, 1::2]
    kept = match.kept.shape[1]
    for n in range(2):
        for j in range(b.shape[1]):
            members = [i for i, d in zip(match.src[n].tolist(), match.dst[n].tolist()) if d == j]
            weights = torch.cat([sb[n, j], *[sa[n, i] for i in members]])
            values = torch.stack([b[n, j], *[a[n, i] for i in members]])
            expected = (weights[:, None] * values).sum(0) / weights.sum()
            assert torch.allclose(merged[n, kept + j], expected, atol=1e-6)
            assert merged_sizes[n, kept + j, 0] == weights.sum()
        for slot, i in enumerate(match.kept[n].tolist()):  # unmerged A tokens pass through unchanged
            assert torch.equal(merged[n, slot], a[n, i]) and merged_sizes[n, slot, 0] == sa[n, i, 0]


@pytest.mark.parametrize("r", [1, 3, 4])
def test_matching_agrees_with_an_explicit_loop(r):
    torch.manual_seed(r)
    metric = torch.randn(2, 9, 5)
    match = bipartite_soft_matching(metric, r)
    for n in range(2):
        got = {2 * i: 2 * j + 1 for i, j in zip(match.src[n].tolist(), match.dst[n].tolist())}
        assert got == reference_matching(metric[n], r)
        assert 0 in (2 * match.kept[n]).tolist()  # CLS stays, first
        assert match.kept[n, 0] == 0 and match.kept[n].tolist() == sorted(match.kept[n].tolist())


def test_proportional_attention_adds_log_size_to_the_logits():
    """A token of size 2 gets the attention of two identical copies of it (ToMe §3, proportional attention)."""
    from vlalign.models.layers import Attention

    torch.manual_seed(0)
    attn = Attention(8, 2)
    x = torch.randn(1, 4, 8)
    duplicated = torch.cat([x, x[:, 3:]], dim=1)  # token 3 twice
    bias = torch.tensor([1.0, 1.0, 1.0, 2.0]).log()[None, None, None]
    proportional = attn(x, bias)
    assert torch.allclose(proportional, attn(duplicated)[:, :4], atol=1e-6)


def test_gradients_flow_through_merged_tokens():
    model = tiny_model(merge_r=4)
    ids = torch.randint(4, 50, (3, 8))
    out = model(images(), ids, ids != 0)
    (out.image_embeds.sum() + out.text_embeds.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.vision.parameters())


def test_a_schedule_that_cannot_be_merged_is_a_clear_error():
    with pytest.raises(ValueError, match="block 1 would merge 5 tokens, but it receives 9"):
        merge_schedule(0, [8, 5], depth=2, num_tokens=17)
    with pytest.raises(ValueError, match="2 entries; the vision tower has 3 blocks"):
        merge_schedule(0, [1, 1], depth=3, num_tokens=17)
    with pytest.raises(ConfigError, match="Token merging"):
        tiny_model(merge_r=9)
