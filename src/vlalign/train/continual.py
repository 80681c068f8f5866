"""CTP's two frozen companions of a continual-pretraining task: the reference and the compatible momentum model.

A task of a CTP stream (objective "ctp") starts from the previous task's run (``model.init_from``).
Its newest weights become the *reference*: fixed for the whole task, they are what topology
preservation keeps the batch structure close to. The *momentum* model starts as the reference too
and, after every optimizer step, absorbs the current and the reference weights (CTP §3.2; the
reference code's ``_momentum_update_three``):

    θ_m ← m·θ_m + (1 − m)/2 · θ + (1 − m)/2 · θ_ref          (m = 0.9 in CTP)

so it is a short average of the current model pulled halfway back to the old task: "compatible"
with both. Before each step ``annotate`` adds both models' embeddings of the batch, which the
objective reads (``vlalign.objectives.continual``). Neither model is saved with a checkpoint: a
resumed run rebuilds the reference from ``model.init_from`` and restarts the momentum model at
(θ + θ_ref)/2, the fixed point of the update for a model that stops changing; with m = 0.9 the
update forgets any starting point within a few tens of steps.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vlalign.models.dual_encoder import DualEncoder
from vlalign.models.transfer import load_matching_weights

# Batch keys the "ctp" objective reads, each [B, E] unit norm and without gradient.
TEACHER_KEYS = ("reference_image_embeds", "reference_text_embeds", "momentum_image_embeds", "momentum_text_embeds")


def _frozen(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model).eval()
    return model.requires_grad_(False)


class ContinualTeachers:
    """The reference (previous-task) model and the compatible momentum model of one CTP task."""

    def __init__(self, model: DualEncoder, previous_runs: list[str], momentum: float):
        if not 0 <= momentum < 1:
            raise ValueError(f"CTP momentum must be in [0, 1), got {momentum}")
        if not previous_runs:
            raise ValueError("CTP distils from the previous task's model: set model.init_from to its run directory")
        self.momentum = momentum
        self.reference = _frozen(model)
        load_matching_weights(self.reference, previous_runs)  # the previous task's weights, even on resume
        self.momentum_model = _frozen(self.reference)

    @torch.no_grad()
    def restart_momentum(self, model: nn.Module) -> None:
        """After a resume: the momentum model at (θ + θ_ref)/2, the update's fixed point for θ held still."""
        for param_m, param, param_r in self._triples(model):
            param_m.copy_((param + param_r) / 2)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold in the weights after an optimizer step: θ_m ← m·θ_m + (1 − m)/2·(θ + θ_ref)."""
        half = (1 - self.momentum) / 2
        for param_m, param, param_r in self._triples(model):
            param_m.mul_(self.momentum).add_(param.detach(), alpha=half).add_(param_r, alpha=half)

    @torch.no_grad()
    def annotate(self, batch: dict) -> dict:
        """Add both models' image and text embeddings of the batch under ``TEACHER_KEYS``; returns the batch."""
        images, ids, mask = batch["images"], batch["text_ids"], batch["text_mask"]
        for prefix, teacher in (("reference", self.reference), ("momentum", self.momentum_model)):
            out = teacher(images, ids, mask, batch.get("channel_ids"), embeddings_only=True)
            batch[f"{prefix}_image_embeds"], batch[f"{prefix}_text_embeds"] = out.image_embeds, out.text_embeds
        return batch

    def _triples(self, model: nn.Module):
        model = getattr(model, "module", model)  # a DDP-wrapped model holds the same parameters in order
        return [(param_m, param, param_r) for param_m, param, param_r in
                zip(self.momentum_model.parameters(), model.parameters(), self.reference.parameters())
                if param_m.is_floating_point()]
