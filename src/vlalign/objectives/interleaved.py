"""VL-GPT's unified objective (Zhu et al. 2023; METHODS.md §4 row 8) on ``InterleavedOutput``:
next-token cross-entropy on the text tokens plus ``weight`` × a regression loss on the image slots.

Which positions learn what:
- text: position p predicts token p + 1 when that token is text (a word or EOS), never an image slot or padding;
- images: the image at slot p is regressed from position p - 1 when token p - 1 is a word, i.e. an image that
  text describes. An image that opens a row or follows another image has nothing to be predicted from, and
  regressing it would only pull the head toward the mean image. [inferred: VL-GPT regresses every image of
  its interleaved data; the restriction is a small-scale choice.]
Regression: "mse" on the embeddings (VL-GPT) or "cosine" (1 - cos).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vlalign.models.interleaved import InterleavedOutput


@dataclass(kw_only=True)
class InterleavedLossConfig:
    weight: float = 1.0  # λ on the regression term; 0 = text only
    regression: str = "mse"  # "mse" | "cosine"

    def __post_init__(self):
        if self.regression not in ("mse", "cosine") or self.weight < 0:
            raise ValueError(f"regression must be 'mse' or 'cosine' and weight >= 0, got {self.regression!r}, "
                             f"{self.weight}")


def regression_targets(ids: Tensor, mask: Tensor, image_token_id: int, special_ids: tuple[int, ...]) -> Tensor:
    """[B, S] bool: positions p whose next token is an image slot and whose own token is a word."""
    word = mask & (ids != image_token_id)
    for special in special_ids:
        word &= ids != special
    before_slot = torch.zeros_like(mask)
    before_slot[:, :-1] = ids[:, 1:] == image_token_id
    return word & before_slot


def interleaved_loss(out: InterleavedOutput, ids: Tensor, mask: Tensor, image_embeds: Tensor, image_token_id: int,
                     special_ids: tuple[int, ...], cfg: InterleavedLossConfig) -> tuple[Tensor, dict[str, float]]:
    """-> (L_text + weight · L_image, metrics). ``special_ids``: BOS/PAD ids that are not words."""
    next_ids = ids[:, 1:]
    text_target = mask[:, 1:] & (next_ids != image_token_id)  # [B, S-1]
    text = F.cross_entropy(out.logits[:, :-1][text_target], next_ids[text_target])
    metrics = {"loss/text": text.item()}
    where = regression_targets(ids, mask, image_token_id, special_ids)  # [B, S]
    if not bool(where.any()) or cfg.weight == 0:
        return text, metrics
    slot_index = (ids == image_token_id).long().cumsum(1)  # [B, S]: images seen up to and including p
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(ids)
    targets = image_embeds[rows[where], slot_index[where]]  # the image at p + 1 is the row's image number cumsum(p)
    predicted = out.predicted_images[where]  # [M, E]
    if cfg.regression == "mse":
        image = F.mse_loss(predicted, targets, reduction="none").sum(-1).mean()
    else:
        image = (1 - F.cosine_similarity(predicted, targets, dim=-1)).mean()
    metrics["loss/image"] = image.item()
    return text + cfg.weight * image, metrics
