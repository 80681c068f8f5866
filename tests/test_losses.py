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
        row = [scale * image[i] @ text[j] for j in range(n)]
        col = [scale * image[j] @ text[i] for j in range(n)]
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
