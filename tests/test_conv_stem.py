"""The convolutional stem (model.vision.patch_embed=conv)."""

import pytest
import torch

from vlalign.config import ModelConfig
from vlalign.models import build_model
from vlalign.models.conv_stem import ConvStemEmbed


def test_conv_stem_gives_the_patch_grid_of_tokens():
    stem = ConvStemEmbed(image_size=64, patch_size=8, in_channels=3, width=64)
    tokens = stem(torch.randn(2, 3, 64, 64)).tokens
    assert tokens.shape == (2, 64, 64)  # (64/8)^2 tokens of width 64
    with pytest.raises(ValueError, match="power-of-two"):
        ConvStemEmbed(image_size=60, patch_size=6, in_channels=3, width=64)


def test_a_samples_features_do_not_depend_on_its_batch():
    """No batch statistics (GroupNorm, not BatchNorm): split batches stay exact."""
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.vision.patch_embed = "vit-micro", "text-micro", "conv"
    torch.manual_seed(0)
    model = build_model(cfg, 32, 100, 8).train()
    images = torch.randn(6, 3, 32, 32)
    together = model.encode_image(images)
    alone = torch.cat([model.encode_image(images[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
