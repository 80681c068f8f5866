"""SALT: distilling a small teacher's batch similarities early in training, then CLIP alone."""

import json

import pytest
import torch
import torch.nn.functional as F

from vlalign.config import apply_overrides
from vlalign.errors import ConfigError
from vlalign.objectives.salt import distillation_weight, similarity_distillation_loss
from vlalign.recipes import get_recipe
from vlalign.train import run_training


def unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_distillation_loss_is_the_mean_of_row_and_column_kl_by_a_loop():
    image, text, t_image, t_text = unit(5, 8, seed=0), unit(5, 8, seed=1), unit(5, 4, seed=2), unit(5, 4, seed=3)
    scale, temperature = torch.tensor(10.0), 0.1
    loss = similarity_distillation_loss(image, text, scale, t_image, t_text, temperature)
    student, teacher = scale * image @ text.t(), t_image @ t_text.t() / temperature

    def kl(p_logits, q_logits):  # KL(softmax(p) || softmax(q)), one row
        p, q = p_logits.softmax(0), q_logits.softmax(0)
        return float((p * (p.log() - q.log())).sum())

    rows = sum(kl(teacher[i], student[i]) for i in range(5)) / 5
    cols = sum(kl(teacher[:, j], student[:, j]) for j in range(5)) / 5
    assert loss.item() == pytest.approx((rows + cols) / 2, rel=1e-5)
    # A student whose logits equal the teacher's has nothing left to learn.
    same = similarity_distillation_loss(t_image, t_text, torch.tensor(1 / temperature), t_image, t_text, temperature)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_the_schedule_switches_distillation_off():
    assert [distillation_weight(s, 0.5, 3) for s in range(5)] == [0.5, 0.5, 0.5, 0.0, 0.0]


def test_a_salt_run_distils_then_trains_on_clip_alone(trained_tiny_run, tmp_path):
    cfg = apply_overrides(get_recipe("tiny"), ["objective.name=salt", f"objective.salt.teacher={trained_tiny_run}",
                                               "objective.salt.kd_steps=2", "train.steps=4", "train.log_every=1",
                                               "train.checkpoint_every=4", "data.train=shapes:n=128,seed=0"])
    run_training(cfg, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["salt/kd_weight"] for r in records] == [1.0, 1.0, 0.0, 0.0]
    assert all("loss/kd" in r for r in records[:2]) and not any("loss/kd" in r for r in records[2:])
    assert records[-1]["loss"] == records[-1]["loss/clip"]


def test_salt_without_a_teacher_is_a_config_error():
    with pytest.raises(ConfigError, match="objective.salt.teacher"):
        apply_overrides(get_recipe("tiny"), ["objective.name=salt"])


def test_teacher_losses_match_a_loop_over_each_pool():
    from vlalign.curate.teacher_selection import teacher_losses

    image, text = unit(6, 4, seed=4), unit(6, 4, seed=5)
    losses = teacher_losses(image, text, 10.0, pool_size=5)  # a pool of all the others
    for i in range(6):
        logits = 10.0 * image[i] @ text.t()  # every caption, the own one included
        assert losses[i].item() == pytest.approx(float(-logits.log_softmax(0)[i]), rel=1e-5)


def test_informative_subset_skips_the_hardest_and_keeps_the_next():
    from vlalign.curate.teacher_selection import informative_subset

    losses = torch.tensor([0.1, 5.0, 2.0, 3.0, 0.5, 4.0, 1.0, 0.2, 2.5, 0.3])
    assert informative_subset(losses, keep=0.3, skip_hardest=0.2).tolist() == [2, 3, 8]  # 5.0, 4.0 skipped
    assert informative_subset(losses, keep=1.0).tolist() == list(range(10))
    with pytest.raises(Exception, match="at most 1"):
        informative_subset(losses, keep=0.9, skip_hardest=0.2)
