import pytest
import torch

from vlalign.config import ModelConfig, ObjectiveConfig
from vlalign.models import build_model
from vlalign.models.classifier import LinearClassifier
from vlalign.models.registry import TEXT_SIZES, VISION_SIZES
from vlalign.objectives import OBJECTIVES, build_objective


def tiny_model(**vision):
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.embed_dim = "vit-micro", "text-micro", 16
    for k, v in vision.items():
        setattr(cfg.vision, k, v)
    return build_model(cfg, image_size=16, vocab_size=50, context_length=8)


def batch(b=4, c=3):
    torch.manual_seed(0)
    ids = torch.randint(4, 50, (b, 8))
    ids[:, 6:] = 0  # padding
    return torch.randn(b, c, 16, 16), ids, ids != 0


def test_tower_output_shapes():
    model = tiny_model(patch_size=4)
    images, ids, mask = batch()
    out = model(images, ids, mask)
    assert out.image_embeds.shape == (4, 16) and out.text_embeds.shape == (4, 16)
    assert out.vision.tokens.shape == (4, 16, 64)  # (16/4)^2 patches, width 64
    assert out.text.tokens.shape == (4, 8, 64)
    assert len(out.vision.intermediates) == VISION_SIZES["vit-micro"].depth
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(4))


def test_padding_does_not_change_text_embedding():
    model = tiny_model().eval()
    _, ids, mask = batch()
    short = model.encode_text(ids[:, :6], mask[:, :6])
    long = model.encode_text(ids, mask)
    assert torch.allclose(short, long, atol=1e-6)


def test_size_table_rows_build():
    for name in ("vit-micro", "vit-tiny"):
        assert VISION_SIZES[name].width % VISION_SIZES[name].heads == 0
    assert set(TEXT_SIZES) >= {"text-micro", "text-tiny"}


# Parameters an objective does not train: the bias is the sigmoid loss's, the classifier the supervised
# loss's, and the supervised loss uses the image tower and its classifier only.
UNUSED = {"clip": ("logit_bias", "classifier."), "siglip": ("classifier.",),
          "supervised": ("text.", "image_head.", "text_head.", "logit_")}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_trains_every_parameter(name):
    model = tiny_model()
    model.classifier = LinearClassifier(model.vision.width, 3)
    objective = build_objective(ObjectiveConfig(name=name))
    images, ids, mask = batch()
    loss, metrics = objective(model(images, ids, mask), {"labels": torch.tensor([0, 2, 1, 2])})
    loss.backward()
    assert torch.isfinite(loss) and metrics
    for pname, p in model.named_parameters():
        if pname.startswith(UNUSED.get(name, ())):
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
