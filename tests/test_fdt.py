"""Sparsemax and the FDT grounding head (METHODS.md §2)."""

import pytest
import torch
import torch.nn.functional as F

from vlalign.models.fdt import FDTCodebook, FDTGrounding, code_usage_stats
from vlalign.models.sparsemax import _sparsemax_last_dim, sparsemax


def simplex_projection_by_bisection(z: list[float]) -> list[float]:
    """Reference: find tau with sum(max(z - tau, 0)) = 1 by bisection, in plain Python floats."""
    low, high = min(z) - 1.0, max(z)  # the sum is >= 1 at `low` and 0 at `high`
    for _ in range(200):
        tau = (low + high) / 2
        if sum(max(v - tau, 0.0) for v in z) > 1.0:
            low = tau
        else:
            high = tau
    return [max(v - tau, 0.0) for v in z]


# ---------------------------------------------------------------- sparsemax


def test_sparsemax_known_values():
    torch.testing.assert_close(sparsemax(torch.tensor([1.0, 0.5, -1.0])), torch.tensor([0.75, 0.25, 0.0]))
    torch.testing.assert_close(sparsemax(torch.tensor([0.0, 0.0])), torch.tensor([0.5, 0.5]))
    # A gap of more than 1 between the top two entries gives a one-hot output.
    torch.testing.assert_close(sparsemax(torch.tensor([3.0, 1.5, 0.0])), torch.tensor([1.0, 0.0, 0.0]))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_sparsemax_lies_on_the_simplex_along_any_dim(dim):
    torch.manual_seed(0)
    z = torch.randn(3, 4, 7) * 3
    p = sparsemax(z, dim=dim)
    assert p.shape == z.shape
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(dim=dim), torch.ones_like(p.sum(dim=dim)))
    # Same answer as moving the axis last and projecting row by row.
    rows = z.movedim(dim, -1).reshape(-1, z.shape[dim])
    expected = torch.stack([sparsemax(row) for row in rows]).reshape(z.movedim(dim, -1).shape).movedim(-1, dim)
    torch.testing.assert_close(p, expected)


def test_sparsemax_is_sparse_for_spread_inputs_and_dense_for_flat_ones():
    torch.manual_seed(0)
    spread = sparsemax(torch.randn(8, 50) * 5)
    assert ((spread > 0).sum(-1) <= 5).all()
    flat = sparsemax(torch.randn(8, 50) * 1e-3)
    assert (flat > 0).all()


def test_sparsemax_equals_the_simplex_projection_by_bisection():
    torch.manual_seed(0)
    z = torch.randn(20, 9, dtype=torch.float64) * torch.logspace(-2, 1, 20, dtype=torch.float64)[:, None]
    expected = torch.tensor([simplex_projection_by_bisection(row.tolist()) for row in z], dtype=torch.float64)
    torch.testing.assert_close(sparsemax(z), expected, atol=1e-10, rtol=0)


def test_sparsemax_is_invariant_to_adding_a_constant_and_stable_for_large_inputs():
    torch.manual_seed(0)
    z = torch.randn(4, 16, dtype=torch.float64)
    for shift in (-1e8, 1e3, 1e12):
        torch.testing.assert_close(sparsemax(z + shift), sparsemax(z), atol=1e-4, rtol=0)
    huge = sparsemax(torch.randn(4, 16) * 1e30)
    assert torch.isfinite(huge).all()
    torch.testing.assert_close(huge.sum(-1), torch.ones(4))


def test_sparsemax_gives_zero_weight_to_negative_infinity():
    z = torch.tensor([0.2, float("-inf"), 0.1, float("-inf")])
    torch.testing.assert_close(sparsemax(z), torch.tensor([0.55, 0.0, 0.45, 0.0]))


def test_sparsemax_low_precision_input_keeps_its_dtype():
    torch.manual_seed(0)
    z = torch.randn(4, 300)
    p = sparsemax(z.bfloat16())
    assert p.dtype == torch.bfloat16
    torch.testing.assert_close(p.float(), sparsemax(z), atol=1e-2, rtol=0)


def test_sparsemax_gradcheck_float64():
    torch.manual_seed(0)
    z = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sparsemax(x, dim=1), (z,))


def test_sparsemax_custom_backward_matches_autograd_through_the_forward_ops():
    torch.manual_seed(0)
    z = torch.randn(5, 12, dtype=torch.float64) * 2
    g = torch.randn(5, 12, dtype=torch.float64)
    z_custom = z.clone().requires_grad_()
    z_autograd = z.clone().requires_grad_()
    (sparsemax(z_custom) * g).sum().backward()
    (_sparsemax_last_dim(z_autograd) * g).sum().backward()
    torch.testing.assert_close(z_custom.grad, z_autograd.grad)


def test_sparsemax_rejects_integer_input():
    with pytest.raises(ValueError, match="floating-point"):
        sparsemax(torch.tensor([1, 2, 3]))


# ---------------------------------------------------------------- FDT head


def make_grounding(**kwargs) -> FDTGrounding:
    torch.manual_seed(0)
    return FDTGrounding(token_dim=12, codebook=FDTCodebook(num_codes=64, code_dim=16), **kwargs)


def padded_batch():
    """Tokens [3, 5, 12] with 5, 3 and 1 real tokens; padded slots hold large arbitrary values."""
    torch.manual_seed(1)
    lengths = torch.tensor([5, 3, 1])
    mask = torch.arange(5)[None] < lengths[:, None]  # [3, 5]
    tokens = torch.randn(3, 5, 12)
    tokens[~mask] = torch.randn(int((~mask).sum()), 12) * 100
    return tokens, mask


@pytest.mark.parametrize("pool", ["max", "mean", "sum"])
def test_fdt_feature_is_invariant_to_appended_padding(pool):
    grounding = make_grounding(pool=pool)
    tokens, mask = padded_batch()
    extra = torch.randn(3, 4, 12) * 50  # four more pad slots with arbitrary values
    longer_tokens = torch.cat([tokens, extra], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)

    short = grounding(tokens, mask)
    long = grounding(longer_tokens, longer_mask)
    torch.testing.assert_close(long.scores, short.scores)
    torch.testing.assert_close(long.weights, short.weights)
    torch.testing.assert_close(long.embedding, short.embedding)
    # Each sample alone, without any padding, gives the same feature.
    for b, length in enumerate(mask.sum(1).tolist()):
        alone = grounding(tokens[b : b + 1, :length], None)
        torch.testing.assert_close(alone.embedding, short.embedding[b : b + 1])


def test_fdt_padded_tokens_get_no_gradient_and_do_not_change_the_codebook_gradient():
    grounding = make_grounding()
    tokens, mask = padded_batch()
    tokens.requires_grad_()
    grounding(tokens, mask).embedding.sum().backward()
    assert (tokens.grad[~mask] == 0).all()
    codes_grad = grounding.codebook.codes.grad.clone()
    grounding.zero_grad()
    tokens_inf = tokens.detach().clone()
    tokens_inf[~mask] = float("inf")
    grounding(tokens_inf, mask).embedding.sum().backward()
    torch.testing.assert_close(grounding.codebook.codes.grad, codes_grad)


def test_fdt_forward_matches_an_explicit_per_token_loop():
    grounding = make_grounding(temperature=0.5)
    tokens, mask = padded_batch()
    out = grounding(tokens, mask)
    codes = grounding.codebook.codes.detach()
    for b in range(tokens.shape[0]):
        queries = grounding.query(tokens[b, mask[b]]).detach()  # [T_real, 16]
        expected_scores = torch.tensor(
            [max(float(q @ code) / (16**0.5 * 0.5) for q in queries) for code in codes]
        )  # [64]
        torch.testing.assert_close(out.scores[b], expected_scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.weights, sparsemax(out.scores))
    torch.testing.assert_close(out.embedding, F.normalize(out.weights @ codes, dim=-1))
    assert ((out.weights > 0).sum(-1) < 64).all()  # sparse


def test_fdt_zero_pad_mode_reproduces_the_reference_multiplicative_mask():
    tokens, mask = padded_batch()
    num_real = mask.sum(1, keepdim=True).float()  # [3, 1]
    # max: padded rows score 0, so every pooled score of a padded sample is at least 0.
    inert = make_grounding(pool="max")(tokens, mask).scores
    reference = make_grounding(pool="max", pad_mode="zero")(tokens, mask).scores
    torch.testing.assert_close(reference[0], inert[0])  # sample 0 has no padding
    torch.testing.assert_close(reference[1:], inert[1:].clamp(min=0))
    # mean: the reference divides by the padded length T=5, not by the number of real tokens.
    inert = make_grounding(pool="mean")(tokens, mask).scores
    reference = make_grounding(pool="mean", pad_mode="zero")(tokens, mask).scores
    torch.testing.assert_close(reference, inert * num_real / 5)


def test_fdt_softmax_activation_is_dense_and_normalised():
    out = make_grounding(activation="softmax")(*padded_batch())
    assert (out.weights > 0).all()
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(3))
    torch.testing.assert_close(out.weights, out.scores.softmax(-1))


def test_fdt_default_temperature_starts_moderately_sparse():
    torch.manual_seed(0)
    grounding = FDTGrounding(token_dim=24, codebook=FDTCodebook(num_codes=1024, code_dim=32))
    with torch.no_grad():
        active_fraction = (grounding(torch.randn(8, 10, 24), None).weights > 0).float().mean().item()
    assert 0.05 < active_fraction < 0.3  # ~14% measured; see DEFAULT_TEMPERATURE in fdt.py


def test_fdt_codebook_is_shared_and_receives_gradient_from_both_modalities():
    torch.manual_seed(0)
    codebook = FDTCodebook(num_codes=32, code_dim=8)
    image, text = FDTGrounding(6, codebook), FDTGrounding(10, codebook)
    assert image.codebook.codes is text.codebook.codes
    image(torch.randn(2, 4, 6), None).embedding.sum().backward()
    image_only = codebook.codes.grad.clone()
    text(torch.randn(2, 3, 10), None).embedding.sum().backward()
    assert not torch.equal(codebook.codes.grad, image_only)  # text's gradient accumulated on top


@pytest.mark.parametrize(
    "kwargs, match",
    [({"pool": "attention"}, "pool"), ({"activation": "sigmoid"}, "activation"),
     ({"pad_mode": "ignore"}, "pad_mode"), ({"temperature": 0.0}, "temperature")],
)
def test_fdt_rejects_unknown_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_grounding(**kwargs)


def test_fdt_rejects_bad_inputs():
    grounding = make_grounding()
    tokens, mask = padded_batch()
    with pytest.raises(ValueError, match="tokens of shape"):
        grounding(tokens[..., :5], mask)
    with pytest.raises(ValueError, match="bool mask"):
        grounding(tokens, mask.long())
    with pytest.raises(ValueError, match="bool mask"):
        grounding(tokens, mask[:, :3])
    mask[2] = False
    with pytest.raises(ValueError, match=r"no real tokens .* indices \[2\]"):
        grounding(tokens, mask)


# ---------------------------------------------------------------- diagnostics


def test_code_usage_stats_on_a_constructed_example():
    image = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    text = torch.tensor([[0.5, 0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.7, 0.3, 0.0]])
    stats = code_usage_stats(image, text)
    assert stats["fdt/active_codes_image"] == pytest.approx(1.5)  # 2 and 1 active
    assert stats["fdt/active_codes_text"] == pytest.approx(2.0)
    assert stats["fdt/used_codes_image"] == 3  # codes {0, 1, 2}
    assert stats["fdt/used_codes_text"] == 3  # codes {0, 2, 3}
    assert stats["fdt/overlap"] == pytest.approx((1 / 3 + 1 / 2) / 2)  # {0,1}vs{0,2}; {2}vs{2,3}


def test_code_usage_stats_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        code_usage_stats(torch.ones(2, 4) / 4, torch.ones(3, 4) / 4)


# ---------------------------------------------------------------- training


def test_fdt_head_trains_with_a_tiny_info_nce():
    torch.manual_seed(0)
    batch, num_tokens, token_dim = 16, 6, 16
    codebook = FDTCodebook(num_codes=128, code_dim=32)
    image, text = FDTGrounding(token_dim, codebook), FDTGrounding(token_dim, codebook)
    params = {id(p): p for p in [*image.parameters(), *text.parameters()]}  # codebook once
    optimizer = torch.optim.Adam(params.values(), lr=3e-3)
    to_text = torch.randn(token_dim, token_dim) / token_dim**0.5  # the text view is a fixed map of the image one

    def info_nce(image_emb, text_emb):
        logits = image_emb @ text_emb.t() / 0.07  # [B, B]
        labels = torch.arange(len(logits))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2

    losses = []
    for _ in range(50):
        image_tokens = torch.randn(batch, num_tokens, token_dim)
        text_tokens = image_tokens @ to_text + 0.1 * torch.randn(batch, num_tokens, token_dim)
        text_mask = torch.arange(num_tokens)[None] < torch.randint(3, num_tokens + 1, (batch, 1))
        image_out, text_out = image(image_tokens, None), text(text_tokens, text_mask)
        loss = info_nce(image_out.embedding, text_out.embedding)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)  # measured 0.32-0.53 over seeds 0-4
    stats = code_usage_stats(image_out.weights, text_out.weights)
    assert 1 <= stats["fdt/active_codes_image"] < 128  # still sparse after training
