import pytest
import torch

from vlalign.config import GENERATIVE_OBJECTIVES, ModelConfig, ObjectiveConfig
from vlalign.models import build_model
from vlalign.models.classifier import LinearClassifier
from vlalign.models.registry import TEXT_SIZES, VISION_SIZES
from vlalign.objectives import OBJECTIVES, build_objective

GENERATIVE = {name for names in GENERATIVE_OBJECTIVES.values() for name in names}  # tested in test_cgvlm.py
WITH_VIEWS = {"gpt4image", "medslip", "velvet", "ps3", "salt"}  # need extra views: test_catalogue_views.py, test_salt.py
WITH_TEACHERS = {"ctp"}  # needs its teachers' embeddings in the batch: tested in test_continual_ctp.py
WITH_VIEWS.add("video-mvm")  # needs a video tower with masked video modelling: tested in test_video.py


def tiny_model(head="projection", fusion="none", **vision):
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.embed_dim, cfg.head = "vit-micro", "text-micro", 16, head
    cfg.fusion.kind, cfg.fusion.mlm_probability = fusion, 0.15 if fusion != "none" else 0.0
    cfg.fdt.num_codes, cfg.fdt.code_dim = 64, 16
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
UNUSED = {"clip": ("logit_bias", "classifier."), "siglip": ("classifier.",), "fdt": ("logit_bias", "classifier."),
          "supervised": ("text.", "image_head.", "text_head.", "logit_"), "filip": ("logit_bias", "classifier."),
          "unicl": ("logit_bias", "classifier."), "ptp": ("logit_bias", "classifier.")}


HEADS = {"fdt": "fdt", "filip": "tokens"}  # objectives that need a particular head
FUSION = {"fusion": "fiber"}  # objectives that need fusion layers (test_fusion.py covers the manager)
UNUSED["fusion"] = ("logit_bias", "classifier.")


@pytest.mark.parametrize("name", sorted(set(OBJECTIVES) - GENERATIVE - WITH_VIEWS - WITH_TEACHERS))
def test_every_objective_trains_every_parameter(name):
    model = tiny_model(head=HEADS.get(name, "projection"), fusion=FUSION.get(name, "none"))
    model.classifier = LinearClassifier(model.vision.width, 3)
    objective = build_objective(ObjectiveConfig(name=name))
    images, ids, mask = batch()
    # unicl reads text types (two labelled samples of class 2 share a label); ptp embeds prompts
    extra = {"text_types": torch.tensor([0, 1, 0, 1]), "prompt_ids": ids.flip(0), "prompt_mask": mask.flip(0)}
    loss, metrics = objective(model(images, ids, mask, **extra), {"labels": torch.tensor([0, 2, 1, 2]), **extra})
    loss.backward()
    assert torch.isfinite(loss) and metrics
    for pname, p in model.named_parameters():
        if pname.startswith(UNUSED.get(name, ())):
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_fdt_head_embeds_in_the_codebook_span_and_ignores_padding():
    model = tiny_model(head="fdt").eval()
    images, ids, mask = batch()
    out = model(images, ids, mask)
    weights = out.extras["image_fdt_weights"]  # [B, K] sparsemax weights
    assert torch.allclose(weights.sum(-1), torch.ones(4)) and (weights >= 0).all()
    codes = model.image_head.grounding.codebook.codes
    assert torch.allclose(out.image_embeds, torch.nn.functional.normalize(weights @ codes, dim=-1), atol=1e-6)
    assert model.image_head.grounding.codebook is model.text_head.grounding.codebook  # one shared codebook
    assert torch.allclose(model.encode_text(ids[:, :6], mask[:, :6]), model.encode_text(ids, mask), atol=1e-6)


def test_fdt_codes_task_on_a_tiny_fdt_run(tmp_path):
    from vlalign.api import load
    from vlalign.config import apply_overrides
    from vlalign.eval.tasks import run_tasks
    from vlalign.recipes import get_recipe
    from vlalign.train import run_training

    cfg = apply_overrides(get_recipe("tiny"), ["model.head=fdt", "objective.name=fdt", "model.fdt.num_codes=64",
                                                "model.fdt.code_dim=16", "train.steps=3", "eval.retrieval_n=32"])
    run_training(cfg, tmp_path, progress=False)
    out = run_tasks(load(tmp_path), ["fdt-codes"])
    (result,) = out.results
    assert 1 <= result["active_codes_image"] <= 64 and 0 <= result["overlap"] <= 1
    assert len(result["codes"]) == 8 and all(isinstance(c["top_words"], list) for c in result["codes"])
    assert out.figures["FDT codes"].startswith(b"\x89PNG")
    records = [__import__("json").loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "fdt/active_codes_text" in records[-1]
