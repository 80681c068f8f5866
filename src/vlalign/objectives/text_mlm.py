"""Masked-LM pre-training of the text tower alone (objective "text-mlm", arch "text-mlm"; Tiny LMs, catalogue #30)."""

from __future__ import annotations

import torch

from vlalign.config import ObjectiveConfig
from vlalign.models.text_mlm import MaskedTextOutput
from vlalign.objectives import Objective, register
from vlalign.objectives.matching import masked_token_loss


@register("text-mlm")
def text_mlm_objective(cfg: ObjectiveConfig) -> Objective:
    """Cross-entropy at the masked positions (BERT's MLM)."""

    def objective(out: MaskedTextOutput, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        loss = masked_token_loss(out.logits, out.targets)
        accuracy = (out.logits.argmax(1) == out.targets).float().mean().item()
        return loss, {"loss/mlm": loss.item(), "mlm_accuracy": accuracy}

    return objective
