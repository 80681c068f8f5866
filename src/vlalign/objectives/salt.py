"""SALT (Rawat et al. 2024, "A Little Help Goes a Long Way: Efficient LLM Training by Leveraging Small
LMs", arXiv 2410.18779; METHODS.md §4 row 48), transposed to contrastive alignment: a small trained
teacher's soft targets are distilled early in training and then switched off.

SALT distils the small model's next-token distribution for the first part of training only: its soft
labels help while the student is weaker than the teacher and bias it afterwards (the paper's
bias-variance argument, §3-4). Here the soft labels are the teacher's batch similarity distributions:
for every image, the softmax over the batch's captions of teacher similarities / ``temperature``, and
for every caption the softmax over the images. The student's CLIP logits are pulled towards them by
KL divergence; the total is ``L_clip + w(step) · L_kd`` with ``w = kd_weight`` for the first
``kd_steps`` optimizer steps and 0 after.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlalign.config import ObjectiveConfig
from vlalign.errors import ConfigError
from vlalign.models.dual_encoder import AlignmentOutput
from vlalign.objectives import Objective, register
from vlalign.objectives.contrastive import clip_loss


def similarity_distillation_loss(image: Tensor, text: Tensor, logit_scale: Tensor, teacher_image: Tensor,
                                 teacher_text: Tensor, temperature: float) -> Tensor:
    """½ [KL(p_teacher ‖ p_student) over captions per image + the same over images per caption].

    image, text [B, E] and teacher_image, teacher_text [B, E_t] unit-norm; logit_scale the student's
    exp(scale) (1/τ). The teacher's distributions are softmax(teacher similarities / temperature)."""
    student = logit_scale * image @ text.t()  # [B, B]
    teacher = (teacher_image @ teacher_text.t()).float() / temperature  # [B, B]
    rows = F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True, reduction="batchmean")
    cols = F.kl_div(F.log_softmax(student.t(), 1), F.log_softmax(teacher.t(), 1), log_target=True,
                    reduction="batchmean")
    return (rows + cols) / 2


def distillation_weight(step: int, kd_weight: float, kd_steps: int) -> float:
    """SALT's schedule: the full weight for optimizer steps 0 .. kd_steps - 1, then none."""
    return kd_weight if step < kd_steps else 0.0


@register("salt")
def salt_objective(cfg: ObjectiveConfig) -> Objective:
    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if "teacher_image_embeds" not in batch:
            raise ConfigError("objective.name=salt needs the teacher's embeddings in the batch; set "
                              "objective.salt.teacher to a trained dual-encoder run.")
        contrastive = clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
        weight = distillation_weight(batch.get("step", 0), cfg.salt.kd_weight, cfg.salt.kd_steps)
        metrics = {"loss/clip": contrastive.item(), "salt/kd_weight": weight}
        if weight == 0:  # after the distillation phase the teacher's term is not even computed
            return contrastive, metrics
        device = out.image_embeds.device
        kd = similarity_distillation_loss(out.image_embeds, out.text_embeds, out.logit_scale,
                                          batch["teacher_image_embeds"].to(device),
                                          batch["teacher_text_embeds"].to(device), cfg.salt.temperature)
        return contrastive + weight * kd, metrics | {"loss/kd": kd.item()}

    return objective
