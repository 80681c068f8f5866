"""Video-text objectives (issue 13 item 8): E-ViLM's masked video modelling beside CLIP, and the VQ-VAE
loss that trains its patch tokenizer (``vlalign.models.vq``).

Plain video-text contrastive training needs no new loss: objective "clip" on the video tower's clip
embeddings (``vlalign.models.video``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign.config import ObjectiveConfig
from vlalign.errors import ConfigError
from vlalign.models.dual_encoder import AlignmentOutput
from vlalign.models.vq import VQOutput
from vlalign.objectives import Objective, register
from vlalign.objectives.contrastive import clip_loss


def masked_code_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """E-ViLM's MVM term: cross-entropy of each masked patch's logits [M, K] against its code [M]."""
    return F.cross_entropy(logits, targets)


def vq_vae_loss(out: VQOutput, commitment: float = 0.25) -> tuple[torch.Tensor, dict[str, float]]:
    """VQ-VAE (van den Oord et al. 2017, Eq. 3): reconstruction + ||sg(z) - e||² (moves the codes) +
    β ||z - sg(e)||² (commits the encoder), β = 0.25 as the paper; squared errors averaged per element."""
    reconstruction = F.mse_loss(out.reconstruction, out.patches)
    codebook = F.mse_loss(out.quantised, out.latents.detach())
    commit = F.mse_loss(out.latents, out.quantised.detach())
    loss = reconstruction + codebook + commitment * commit
    return loss, {"vq/reconstruction": reconstruction.item(), "vq/commitment": commit.item()}


@register("video-mvm")
def video_mvm_objective(cfg: ObjectiveConfig) -> Objective:
    """L = L_clip(clip, caption) + mvm_weight · CE(masked patch -> VQ code) (E-ViLM, Fang et al. 2023)."""

    def objective(out: AlignmentOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logits = getattr(out.vision, "mvm_logits", None)
        if logits is None:
            raise ConfigError("objective.name=video-mvm needs the video tower's masked-patch logits: set "
                              "model.video.frames and model.video.mvm_codes, and train (MVM runs in training only).")
        targets = out.vision.mvm_targets
        clip = clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
        mvm = masked_code_loss(logits, targets)
        accuracy = (logits.argmax(1) == targets).float().mean().item()
        loss = clip + cfg.mvm_weight * mvm
        return loss, {"loss/clip": clip.item(), "loss/mvm": mvm.item(), "mvm_accuracy": accuracy}

    return objective
