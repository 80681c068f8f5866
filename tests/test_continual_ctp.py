"""CTP (issue 13): the domain task stream, the two losses, the teachers and a CTP task trained end to end."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from vlalign.config import ModelConfig, ObjectiveConfig, apply_overrides
from vlalign.data.domains import DOMAIN_SPLITS, domain_world, domains
from vlalign.data.shapes import COLOURS, SHAPES
from vlalign.data.specs import build_source
from vlalign.errors import ConfigError, DataError
from vlalign.models import build_model
from vlalign.objectives import build_objective
from vlalign.objectives.continual import momentum_contrast_loss, topology_preservation_loss
from vlalign.recipes import get_recipe
from vlalign.train import run_training
from vlalign.models.transfer import load_matching_weights
from vlalign.train.continual import ContinualTeachers
from vlalign.train.setup import build_components


@pytest.mark.parametrize("split", list(DOMAIN_SPLITS))
def test_domains_partition_every_combination(split):
    combos = [c for d in domains(split) for c in DOMAIN_SPLITS[split][d]]
    assert len(combos) == len(set(combos)) == len(COLOURS) * len(SHAPES)


def test_domain_scenes_draw_only_from_their_domain():
    world = build_source("shapes-domain:split=family,domain=pointed,n=40,seed=3,size=32")
    allowed = set(DOMAIN_SPLITS["family"]["pointed"])
    assert all((o.colour, o.shape) in allowed for i in range(len(world)) for o in world.scene(i).objects)
    assert domain_world("palette", "cool", 5, 0).scene(0).objects[0].colour in ("green", "blue", "cyan")


def test_bad_domain_spec_names_the_choices():
    with pytest.raises(DataError, match="round, angular, pointed"):
        build_source("shapes-domain:split=family,domain=square")


def _unit(*shape):
    return F.normalize(torch.randn(*shape), dim=-1)


def _kl_loop(student, teacher, tau, exclude_self):
    """KL(softmax(teacher/τ) || softmax(student/τ)) row by row, the diagonal removed when asked."""
    total = 0.0
    for i in range(student.shape[0]):
        keep = [j for j in range(student.shape[1]) if not (exclude_self and j == i)]
        p = torch.softmax(teacher[i, keep] / tau, 0)
        q = torch.log_softmax(student[i, keep] / tau, 0)
        total += float((p * (p.log() - q)).sum())
    return total / student.shape[0]


def test_topology_loss_matches_an_explicit_loop_and_vanishes_for_the_reference_itself():
    torch.manual_seed(0)
    image, text, ref_image, ref_text = (_unit(6, 8) for _ in range(4))
    tau = 0.2
    expected = (_kl_loop(image @ text.t(), ref_image @ ref_text.t(), tau, False)
                + _kl_loop(text @ image.t(), ref_text @ ref_image.t(), tau, False)) / 2 \
        + (_kl_loop(image @ image.t(), ref_image @ ref_image.t(), tau, True)
           + _kl_loop(text @ text.t(), ref_text @ ref_text.t(), tau, True)) / 2
    got = topology_preservation_loss(image, text, ref_image, ref_text, tau)
    assert math.isclose(float(got), expected, rel_tol=1e-4)
    assert float(topology_preservation_loss(image, text, image, text, tau)) == pytest.approx(0, abs=1e-6)
    # Only relations count: rotating every embedding by one orthogonal map changes nothing.
    rotation = torch.linalg.qr(torch.randn(8, 8))[0]
    rotated = topology_preservation_loss(image @ rotation, text @ rotation, image, text, tau)
    assert float(rotated) == pytest.approx(0, abs=1e-5)


def test_momentum_contrast_matches_cross_entropy_on_the_diagonal():
    torch.manual_seed(1)
    image, text, m_image, m_text = (_unit(5, 4) for _ in range(4))
    tau = 0.1
    i2t = sum(-torch.log_softmax(image[i] @ m_text.t() / tau, 0)[i] for i in range(5)) / 5
    t2i = sum(-torch.log_softmax(text[i] @ m_image.t() / tau, 0)[i] for i in range(5)) / 5
    assert float(momentum_contrast_loss(image, text, m_image, m_text, tau)) == pytest.approx(float(i2t + t2i) / 2,
                                                                                              rel=1e-5)


def test_ctp_objective_trains_every_embedding_parameter_and_not_the_teachers():
    cfg = ModelConfig()
    cfg.vision.size, cfg.text.size, cfg.embed_dim = "vit-micro", "text-micro", 16
    torch.manual_seed(0)
    model = build_model(cfg, image_size=16, vocab_size=50, context_length=8)
    images, ids = torch.randn(4, 3, 16, 16), torch.randint(4, 50, (4, 8))
    batch = {"images": images, "text_ids": ids, "text_mask": ids != 0}
    teachers = ContinualTeachers.__new__(ContinualTeachers)  # teachers without a previous run: two frozen copies
    teachers.reference, teachers.momentum_model = (copy.deepcopy(model).requires_grad_(False) for _ in range(2))
    with torch.no_grad():
        for p in teachers.reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    teachers.annotate(batch)
    loss, metrics = build_objective(ObjectiveConfig(name="ctp"))(model(images, ids, ids != 0), batch)
    loss.backward()
    assert metrics["loss/topology"] > 0
    for name, p in model.named_parameters():
        if not name.startswith(("logit_bias", "classifier.")):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad is None for p in teachers.reference.parameters())


def _train(tmp_path, name, overrides):
    base = ["data.train=shapes-domain:split=family,domain=round,n=128,seed=0,size=32", "train.steps=3",
            "train.log_every=1", "train.checkpoint_every=3", "eval.tasks=[]", "train.threads=1", "data.batch_size=16",
            # fp32: the student would run in bf16 where auto picks it, the reference in fp32, and their topologies
            # then differ by bf16 rounding (~1e-4) at the step that must give 0.
            "train.precision=fp32"]
    cfg = apply_overrides(get_recipe("tiny"), base + overrides)
    run_training(cfg, tmp_path / name, progress=False)
    return cfg, [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


def test_ctp_task_starts_at_its_reference_and_the_momentum_update_follows_the_formula(tmp_path):
    _train(tmp_path, "round", [])
    cfg, rows = _train(tmp_path, "angular", [
        "data.train=shapes-domain:split=family,domain=angular,n=128,seed=0,size=32", "objective.name=ctp",
        f"model.init_from=[{tmp_path / 'round'}]"])
    # Step 1 starts from the previous task's weights, which are the reference: nothing to preserve yet.
    assert rows[0]["loss/topology"] == pytest.approx(0, abs=1e-6)
    assert rows[-1]["loss/topology"] > 0

    parts = build_components(cfg, tmp_path / "angular")
    teachers = parts.teachers
    previous = build_components(cfg, tmp_path / "angular").model
    load_matching_weights(previous, [str(tmp_path / "round")])
    for (name, ref), prev in zip(teachers.reference.named_parameters(), previous.parameters()):
        assert torch.equal(ref, prev), name
    model = parts.model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in teachers.momentum_model.parameters()]
    teachers.update(model)
    for b, after, p, r in zip(before, teachers.momentum_model.parameters(), model.parameters(),
                              teachers.reference.parameters()):
        torch.testing.assert_close(after, 0.9 * b + 0.05 * p + 0.05 * r)
    teachers.restart_momentum(model)  # the fixed point: another update with θ unchanged moves nothing
    fixed = [p.clone() for p in teachers.momentum_model.parameters()]
    teachers.update(model)
    for a, b in zip(fixed, teachers.momentum_model.parameters()):
        torch.testing.assert_close(a, b)


def test_ctp_without_a_previous_task_is_a_config_error():
    with pytest.raises(ConfigError, match="model.init_from"):
        apply_overrides(get_recipe("tiny"), ["objective.name=ctp"])


def test_teachers_refuse_an_empty_stream():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="init_from"):
        ContinualTeachers(model, [], 0.9)
