"""Losses on fused image-text features (``vlalign.models.cross_modal``): image-text matching, masked
language modelling and word-region alignment (UNITER, Chen et al. 2020, §3.1; FIBER; ManagerTower)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign.models.fusion import FusedFeatures
from vlalign.objectives.ot import transport_distance


def matching_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ITM: binary cross-entropy as a 2-way softmax over (no, yes). logits [P, 2], labels [P] -> scalar."""
    return F.cross_entropy(logits, labels)


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MLM: cross-entropy at the masked positions. logits [M, V], targets [M] -> scalar."""
    return F.cross_entropy(logits, targets)


def word_region_loss(fused: FusedFeatures, labels: torch.Tensor, beta: float = 0.5,
                     iterations: int = 50) -> torch.Tensor:
    """WRA (UNITER §3.1): the optimal-transport distance between each pair's fused words and fused patches
    is pulled down for true pairs and pushed up for negatives, (Σ_pos D - Σ_neg D) / P as UNITER's
    ``pretrain.py`` (labels [P], 1 = true pair). Patches stand in for UNITER's detector regions."""
    image_mask = fused.image_mask
    if image_mask is None:
        image_mask = torch.ones(fused.image_tokens.shape[:2], dtype=torch.bool, device=fused.image_tokens.device)
    distance = transport_distance(fused.text_tokens, fused.text_mask, fused.image_tokens, image_mask, beta,
                                  iterations)  # [P]
    sign = torch.where(labels == 1, 1.0, -1.0).to(distance.dtype)
    return (sign * distance).sum() / distance.shape[0]
