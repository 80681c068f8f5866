"""Florence-VL depth-breadth fusion: which tokens the connector reads, aligned across views and depths."""

import pytest
import torch

from vlalign.config import RunConfig, apply_overrides
from vlalign.errors import ConfigError
from vlalign.models import build_model
from vlalign.models.depth_breadth import DepthBreadthFeatures


def vlm_cfg(*overrides: str) -> RunConfig:
    cfg = RunConfig()
    cfg.model.arch, cfg.objective.name = "vlm", "generative"
    cfg.model.vision.size, cfg.model.vlm.decoder = "vit-micro", "lm-micro"
    cfg.data.image_size, cfg.data.context_length = 32, 16
    return apply_overrides(cfg, list(overrides))


def build(cfg: RunConfig):
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.data.image_size, 64, cfg.data.context_length).eval()


def test_last_depth_identity_view_is_the_plain_last_layer():
    model = build(vlm_cfg())
    images = torch.randn(2, 3, 32, 32)
    fused, mask = DepthBreadthFeatures([-1], ["identity"])(model.vision, images)
    assert mask is None
    torch.testing.assert_close(fused, model.vision(images).tokens)


def test_channels_concatenate_depths_view_major_against_the_tower_blocks():
    model = build(vlm_cfg())
    images = torch.randn(2, 3, 32, 32)
    fused, _ = DepthBreadthFeatures([0, -1], ["identity", "vflip"])(model.vision, images)
    width = model.vision.width
    assert fused.shape == (2, 16, 4 * width)
    blocks = model.vision(images).intermediates
    torch.testing.assert_close(fused[..., :width], model.vision.ln_post(blocks[0][:, 1:]))
    torch.testing.assert_close(fused[..., width:2 * width], model.vision.ln_post(blocks[1][:, 1:]))


@pytest.mark.parametrize("view, dim", [("hflip", -1), ("vflip", -2)])
def test_a_flipped_view_is_put_back_on_the_identity_grid(view, dim):
    """The flipped view of an image is the identity view of the flipped image, on the image's own grid."""
    model = build(vlm_cfg())
    images = torch.randn(2, 3, 32, 32)
    width = model.vision.width
    flipped_view = DepthBreadthFeatures([-1], ["identity", view])(model.vision, images)[0][..., width:]
    of_flipped = model.vision(images.flip(dim)).tokens.view(2, 4, 4, width)  # [B, rows, cols, D]
    expected = of_flipped.flip(2 if view == "hflip" else 1).reshape(2, 16, width)
    torch.testing.assert_close(flipped_view, expected)


def test_config_builds_a_wider_connector_and_the_model_trains_through_it():
    cfg = vlm_cfg("model.vlm.feature_depths=[-2,-1]", "model.vlm.feature_views=[identity,hflip]",
                  "model.vlm.freeze=[vision,decoder]")
    model = build(cfg)
    assert model.connector.fc1.in_features == 4 * model.vision.width
    ids = torch.randint(0, 64, (2, 5))
    out = model(torch.randn(2, 3, 32, 32), ids, torch.ones(2, 5, dtype=torch.bool))
    assert out.image_tokens.shape == (2, 16, model.decoder.embed_tokens.weight.shape[1])
    out.logits.sum().backward()
    assert model.connector.fc1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("override", ["model.vlm.feature_depths=[2]", "model.vlm.feature_depths=[-1,-1]",
                                      "model.vlm.feature_views=[rotate]"])
def test_bad_depths_and_views_are_config_errors(override):
    with pytest.raises(ConfigError, match="feature_"):
        vlm_cfg(override)
