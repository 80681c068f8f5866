"""CTP's continual-pretraining losses (Zhu et al., ICCV 2023, arXiv 2308.07146; code KevinLight831/CTP).

While a new task (domain) is learnt, two frozen copies of the dual encoder read the same batch
(``vlalign.train.continual.ContinualTeachers``): the *reference*, the model as the previous task
left it, and the *momentum* model, an average that absorbs the current and the reference weights.

- Compatible momentum contrast (§3.2): the current image embedding is contrasted with the momentum
  model's text embeddings (and the current text with its image embeddings), the pair on the diagonal
  being the positive. The momentum model's features move slowly and stay compatible with the old
  task's, so the new features are pulled towards a space the old task can still read.
- Topology preservation (§3.3): the softmax over the batch of each sample's similarities (image to
  text, text to image, image to image and text to text, self excluded) is kept close, in KL, to the
  reference model's. Only the *relations* between samples are distilled, not the features
  themselves, which leaves them free to move (the "flexibility of feature adjustment" of the paper).

The reference code uses one fixed temperature (0.07) for both and sums them with weight 1 onto
the contrastive loss; it also contrasts against a queue of 1024 momentum features, which is left
out here (in-batch only: a queue's old features go stale within a few steps at m = 0.9).
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


def _self_excluded(sims: Tensor) -> Tensor:
    """[B, B] similarities with the diagonal set to a large negative value (no sample is its own neighbour)."""
    eye = torch.eye(sims.shape[0], dtype=torch.bool, device=sims.device)
    return sims.masked_fill(eye, -1e4)


def _kl_rows(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(softmax(teacher) || softmax(student)) per row, averaged over rows ("batchmean")."""
    return F.kl_div(F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1), reduction="batchmean",
                    log_target=True)


def topology_preservation_loss(image: Tensor, text: Tensor, ref_image: Tensor, ref_text: Tensor,
                               temperature: float) -> Tensor:
    """Mean of the cross-modal and same-modal topology terms (CTP's reference: (i2t + t2i)/2 + (i2i + t2t)/2).

    image, text: [B, E] current embeddings (unit norm); ref_image, ref_text: [B, E] the reference
    model's, without gradient.
    """
    pairs = [(image @ text.t(), ref_image @ ref_text.t()),  # image -> text
             (text @ image.t(), ref_text @ ref_image.t())]  # text -> image
    cross = sum(_kl_rows(s / temperature, r / temperature) for s, r in pairs) / 2
    same = [(_self_excluded(image @ image.t()), _self_excluded(ref_image @ ref_image.t())),
            (_self_excluded(text @ text.t()), _self_excluded(ref_text @ ref_text.t()))]
    within = sum(_kl_rows(s / temperature, r / temperature) for s, r in same) / 2
    return cross + within


def momentum_contrast_loss(image: Tensor, text: Tensor, momentum_image: Tensor, momentum_text: Tensor,
                           temperature: float) -> Tensor:
    """InfoNCE of current embeddings against the momentum model's: (CE(i -> t_m) + CE(t -> i_m)) / 2.

    image, text: [B, E] current (unit norm); momentum_image, momentum_text: [B, E], no gradient.
    """
    targets = torch.arange(image.shape[0], device=image.device)
    i2t = F.cross_entropy(image @ momentum_text.t() / temperature, targets)
    t2i = F.cross_entropy(text @ momentum_image.t() / temperature, targets)
    return (i2t + t2i) / 2


@register("ctp", embeddings_only=True)
def ctp_objective(cfg: ObjectiveConfig) -> Objective:
    """CTP: L = L_clip + w_m·L_momentum + w_t·L_topology; the teachers' embeddings come with the batch."""
    ctp = cfg.ctp

    def objective(out: AlignmentOutput, batch: dict) -> tuple[Tensor, dict[str, float]]:
        if "reference_image_embeds" not in batch:
            raise ConfigError("objective 'ctp' needs the teachers' embeddings in the batch; train it with "
                              "vlalign's trainer (it builds them from model.init_from).")
        image, text = out.image_embeds, out.text_embeds
        clip = clip_loss(image, text, out.logit_scale)
        momentum = momentum_contrast_loss(image, text, batch["momentum_image_embeds"],
                                          batch["momentum_text_embeds"], ctp.temperature)
        topology = topology_preservation_loss(image, text, batch["reference_image_embeds"],
                                              batch["reference_text_embeds"], ctp.temperature)
        loss = clip + ctp.momentum_weight * momentum + ctp.topology_weight * topology
        return loss, {"loss/clip": clip.item(), "loss/momentum": momentum.item(), "loss/topology": topology.item()}

    return objective
