import math

import pytest
import torch
import torch.nn.functional as F

from vlalign.objectives.contrastive import clip_loss, siglip_loss


def embeds(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1))


def test_clip_loss_equals_explicit_loop():
    image, text = embeds()
    scale = torch.tensor(7.0)
    n = image.shape[0]
    total = 0.0
    for i in range(n):
        row = [(scale * image[i] @ text[j]).item() for j in range(n)]
        col = [(scale * image[j] @ text[i]).item() for j in range(n)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    assert clip_loss(image, text, scale).item() == pytest.approx(total / (2 * n), rel=1e-5)


def test_siglip_loss_equals_explicit_loop():
    image, text = embeds()
    scale, bias = torch.tensor(10.0), torch.tensor(-3.0)
    n = image.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = (scale * image[i] @ text[j] + bias).item()
            total += -math.log(1 / (1 + math.exp(-z * logit)))
    assert siglip_loss(image, text, scale, bias).item() == pytest.approx(total / n, rel=1e-5)


def test_perfect_alignment_gives_low_clip_loss():
    image, _ = embeds(n=8, d=16)
    assert clip_loss(image, image, torch.tensor(100.0)).item() < clip_loss(*embeds(n=8, d=16), torch.tensor(100.0)).item()


def test_clip_loss_with_hard_negatives_equals_explicit_loop():
    """NegCLIP: each image's softmax also runs over every valid negative; text->image is unchanged."""
    image, text = embeds()
    negatives, _ = embeds(seed=1)
    valid = torch.tensor([True, False, True, True, False, True])
    scale = torch.tensor(7.0)
    n = image.shape[0]
    total = 0.0
    for i in range(n):
        row = [(scale * image[i] @ text[j]).item() for j in range(n)]
        row += [(scale * image[i] @ negatives[j]).item() for j in range(n) if valid[j]]
        col = [(scale * image[j] @ text[i]).item() for j in range(n)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    assert clip_loss(image, text, scale, negatives, valid).item() == pytest.approx(total / (2 * n), rel=1e-5)


def test_siglip_loss_with_hard_negatives_equals_explicit_loop():
    image, text = embeds()
    negatives, _ = embeds(seed=1)
    valid = torch.tensor([True, True, False, True, False, True])
    scale, bias = torch.tensor(10.0), torch.tensor(-3.0)
    n = image.shape[0]
    total = 0.0
    for i in range(n):
        pairs = [(text[j], 1.0 if i == j else -1.0) for j in range(n)] + [(negatives[j], -1.0)
                                                                          for j in range(n) if valid[j]]
        for other, z in pairs:
            logit = (scale * image[i] @ other + bias).item()
            total += -math.log(1 / (1 + math.exp(-z * logit)))
    loss = siglip_loss(image, text, scale, bias, negatives, valid)
    assert loss.item() == pytest.approx(total / n, rel=1e-5)


@pytest.mark.parametrize("loss_fn", ["clip", "siglip"])
def test_all_invalid_negatives_change_nothing_and_get_no_gradient(loss_fn):
    image, text = embeds()
    negatives = embeds(seed=1)[0].requires_grad_()
    valid = torch.zeros(6, dtype=torch.bool)
    if loss_fn == "clip":
        plain, with_negatives = clip_loss(image, text, torch.tensor(7.0)), clip_loss(image, text, torch.tensor(7.0),
                                                                                      negatives, valid)
    else:
        scale, bias = torch.tensor(10.0), torch.tensor(-3.0)
        plain, with_negatives = siglip_loss(image, text, scale, bias), siglip_loss(image, text, scale, bias,
                                                                                    negatives, valid)
    assert with_negatives.item() == pytest.approx(plain.item(), rel=1e-6)
    with_negatives.backward()
    assert torch.isfinite(negatives.grad).all() and negatives.grad.abs().max() == 0
