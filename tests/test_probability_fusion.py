"""Team RAS: per-head zero-shot probabilities, multi-head probability fusion, pairwise compound classes."""

import pytest
import torch
import torch.nn.functional as F

from vlalign.eval.probability_fusion import (
    MultiHeadProbabilityFusion,
    pairwise_compound,
    zero_shot_probabilities,
)


def test_pairwise_compound_is_the_product_of_the_parts_row_major():
    torch.manual_seed(0)
    a, b = torch.rand(5, 3).softmax(1), torch.rand(5, 4).softmax(1)
    out = pairwise_compound(a, b)
    expected = torch.tensor([[a[n, i].item() * b[n, j].item() for i in range(3) for j in range(4)] for n in range(5)])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(1), torch.ones(5))


def test_untrained_fusion_is_the_mean_of_the_heads():
    probs = torch.rand(3, 6, 5).softmax(-1)
    torch.testing.assert_close(MultiHeadProbabilityFusion(3, 5)(probs), probs.mean(0))


def test_fitting_weights_each_head_for_the_classes_it_gets_right():
    """Head 0 knows classes 0-1 and confuses 2 with 3, head 1 knows 2-3 and confuses 0 with 1: the fit learns
    which head to trust per class, and the fused prediction beats both heads and their mean."""
    labels = torch.arange(4).repeat(50)  # [200]
    swapped = torch.tensor([1, 0, 3, 2])[labels]

    def confident(classes):
        return F.one_hot(classes, 4).float() * 0.88 + 0.03

    right, wrong = confident(labels), confident(swapped)
    head0 = torch.where((labels < 2)[:, None], right, wrong * torch.tensor([1.0, 1.0, 1.1, 1.1]))
    head1 = torch.where((labels >= 2)[:, None], right, wrong * torch.tensor([1.1, 1.1, 1.0, 1.0]))
    head0, head1 = head0 / head0.sum(1, keepdim=True), head1 / head1.sum(1, keepdim=True)
    probs = torch.stack([head0, head1])
    fusion = MultiHeadProbabilityFusion(2, 4)
    losses = fusion.fit(probs, labels, steps=150)
    assert losses[-1] < losses[0]
    weights = fusion.weights()
    assert (weights[0, :2] > 0.5).all() and (weights[1, 2:] > 0.5).all()

    def accuracy(p):
        return (p.argmax(1) == labels).float().mean().item()

    fused = accuracy(fusion(probs))
    assert fused > max(accuracy(head0), accuracy(head1), accuracy(probs.mean(0)))


def test_zero_shot_probabilities_are_the_softmax_of_scaled_prompt_scores():
    torch.manual_seed(0)
    table = {p: F.normalize(torch.randn(8), dim=0) for p in ("a", "b", "c")}

    def encode_text(texts):
        return torch.stack([table[t] for t in texts])

    images = F.normalize(torch.randn(4, 8), dim=1)
    probs = zero_shot_probabilities(encode_text, images, [["a"], ["b", "c"]], "max", 10.0)
    bc = torch.maximum(images @ table["b"], images @ table["c"])
    expected = (10.0 * torch.stack([images @ table["a"], bc], 1)).softmax(1)
    torch.testing.assert_close(probs, expected)


def test_shape_errors_name_the_expected_layout():
    with pytest.raises(ValueError, match="heads=2"):
        MultiHeadProbabilityFusion(2, 4)(torch.rand(3, 5, 4))
    with pytest.raises(ValueError, match="different numbers"):
        pairwise_compound(torch.rand(2, 3), torch.rand(3, 3))
