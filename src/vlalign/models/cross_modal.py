"""The fused half of a dual encoder (FIBER, UNITER, ManagerTower): which (image, text) pairs go through
the fusion layers, and the heads on the fused features. Losses live in ``vlalign.objectives.matching``.

Each training forward fuses 3B pairs, as ALBEF (Li et al. 2021, §3.2) and FIBER (§3.2): the B true
pairs, each image with a negative text and each text with a negative image. The negatives are sampled
from the softmax of the batch's contrastive similarities ("hard": likely confusions get picked more
often) or uniformly ("random"). With ``mlm_probability`` > 0 it also fuses every image with its masked
caption for image-conditioned masked language modelling (UNITER §3.1, "conditional masking": the
image is never masked while the text is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.data.tokenizer import SPECIAL_TOKENS, UNK
from vlalign.models.fusion import FusedFeatures, select_rows, trim_padding
from vlalign.models.layers import init_weights
from vlalign.models.text import TextFeatures, TextTransformer
from vlalign.models.vit import VisionFeatures, VisionTransformer

NUM_SPECIAL = len(SPECIAL_TOKENS)  # ids below this are [PAD], [UNK], [BOS], [EOS]: never masked
# The byte-level BPE never emits [UNK] (every byte has a token), so its embedding is free to be [MASK].
MASK_ID = SPECIAL_TOKENS.index(UNK)
IGNORE = -100  # target of a position that is not predicted (F.cross_entropy's ignore_index)
NEGATIVE_KINDS = ("hard", "random")


@dataclass
class FusionOutput:
    match_logits: torch.Tensor  # [3B, 2] ITM logits: true pairs, then (image, negative text), (negative image, text)
    match_labels: torch.Tensor  # [3B] long, 1 = a true pair
    fused: FusedFeatures  # the fused features of those 3B pairs (word-region alignment reads their tokens)
    mlm_logits: torch.Tensor | None = None  # [M, V] at the M masked positions of the batch
    mlm_targets: torch.Tensor | None = None  # [M] the original token ids there


class MatchingHead(nn.Module):
    """ITM: tanh poolers on each stream's pooled feature (BERT/METER), concatenated -> 2 logits (no, yes)."""

    def __init__(self, image_width: int, text_width: int):
        super().__init__()
        self.image_pool = nn.Linear(image_width, image_width)
        self.text_pool = nn.Linear(text_width, text_width)
        self.fc = nn.Linear(image_width + text_width, 2)
        init_weights(self)

    def forward(self, fused: FusedFeatures) -> torch.Tensor:
        pooled = torch.cat([torch.tanh(self.image_pool(fused.image_pooled)),
                            torch.tanh(self.text_pool(fused.text_pooled))], dim=-1)  # [P, Dv+Dt]
        return self.fc(pooled)  # [P, 2]


class MaskedTokenHead(nn.Module):
    """MLM (BERT's prediction head): dense -> GELU -> LayerNorm -> vocabulary logits."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.decoder = nn.Linear(width, vocab_size)
        init_weights(self)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(tokens))))  # [M, V]


def sample_negatives(similarity: torch.Tensor, same_caption: torch.Tensor,
                     kind: str = "hard") -> tuple[torch.Tensor, torch.Tensor]:
    """(negative text of each image [B], negative image of each text [B]) as batch indices.

    similarity [B, B] scaled contrastive logits (image i, text j); same_caption [B, B] bool, True where
    texts i and j are identical (diagonal included). A text identical to the true caption is a positive,
    never a negative (shapes captions repeat); only when every caption of the batch is the same does
    the sampler fall back to any other row. "hard" samples from the softmax over the allowed entries.
    """
    B = similarity.shape[0]
    if B < 2:
        raise ValueError("image-text matching samples its negatives from the batch; it needs at least 2 pairs, got 1")
    if kind not in NEGATIVE_KINDS:
        raise ValueError(f"unknown negative sampling '{kind}'; use one of {', '.join(NEGATIVE_KINDS)}")
    eye = torch.eye(B, dtype=torch.bool, device=similarity.device)
    allowed = ~same_caption
    allowed = torch.where(allowed.any(1, keepdim=True), allowed, ~eye)  # [B, B], symmetric
    scores = similarity if kind == "hard" else torch.zeros_like(similarity)
    negative_text = torch.multinomial(scores.masked_fill(~allowed, float("-inf")).softmax(1), 1).squeeze(1)
    negative_image = torch.multinomial(scores.t().masked_fill(~allowed, float("-inf")).softmax(1), 1).squeeze(1)
    return negative_text, negative_image


def mask_tokens(ids: torch.Tensor, mask: torch.Tensor, probability: float,
                vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of word tokens: (masked ids [B, L], targets [B, L], IGNORE where not predicted).

    Each word token (real, not [BOS]/[EOS]) is picked with ``probability``; a picked token becomes [MASK]
    80% of the time, a random word 10%, and stays 10% (Devlin et al. 2019 §3.1). Every text with a
    word gets at least one pick, as UNITER's data loader does.
    """
    maskable = mask & (ids >= NUM_SPECIAL)  # [B, L]
    picked = (torch.rand(ids.shape, device=ids.device) < probability) & maskable
    unpicked = maskable.any(1) & ~picked.any(1)  # [B] texts that drew no pick
    if unpicked.any():
        one = torch.rand(ids.shape, device=ids.device).masked_fill(~maskable, -1).argmax(1)  # [B] a random word
        picked[unpicked, one[unpicked]] = True
    targets = torch.where(picked, ids, IGNORE)
    roll = torch.rand(ids.shape, device=ids.device)
    random_words = torch.randint(NUM_SPECIAL, vocab_size, ids.shape, device=ids.device)
    masked = torch.where(picked & (roll < 0.8), MASK_ID, ids)
    masked = torch.where(picked & (roll >= 0.8) & (roll < 0.9), random_words, masked)
    return masked, targets


class CrossModal(nn.Module):
    """A fusion module (``FiberFusion`` or ``ManagerFusion``), the ITM head and, when
    ``mlm_probability`` > 0, the MLM head. ``forward`` returns a ``FusionOutput`` for the objective;
    ``match_logits`` scores given pairs (ITM re-ranking at evaluation)."""

    def __init__(self, fusion: nn.Module, matching_head: MatchingHead, mlm_head: MaskedTokenHead | None = None,
                 mlm_probability: float = 0.0, negatives: str = "hard", vocab_size: int = 0):
        super().__init__()
        if negatives not in NEGATIVE_KINDS:
            raise ValueError(f"unknown negative sampling '{negatives}'; use one of {', '.join(NEGATIVE_KINDS)}")
        if (mlm_head is None) != (mlm_probability == 0):
            raise ValueError("an MLM head needs mlm_probability > 0, and mlm_probability > 0 an MLM head")
        self.fusion = fusion
        self.matching_head = matching_head
        self.mlm_head = mlm_head
        self.mlm_probability = mlm_probability
        self.negatives = negatives
        self.vocab_size = vocab_size

    def match_logits(self, vision_tower: VisionTransformer, text_tower: TextTransformer, vision: VisionFeatures,
                     text: TextFeatures) -> torch.Tensor:
        """[P, 2] ITM logits of the aligned rows of ``vision`` and ``text``."""
        return self.matching_head(self.fusion(vision_tower, text_tower, vision, trim_padding(text)))

    def forward(self, vision_tower: VisionTransformer, text_tower: TextTransformer, vision: VisionFeatures,
                text: TextFeatures, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                text_ids: torch.Tensor) -> FusionOutput:
        B = text_ids.shape[0]
        text = trim_padding(text)  # the fused passes skip the columns no text of the batch uses
        text_ids = text_ids[:, : text.mask.shape[1]]
        with torch.no_grad():  # mining only picks rows; no gradient flows through the choice
            similarity = logit_scale * image_embeds @ text_embeds.t()  # [B, B]
            same_caption = (text_ids[:, None, :] == text_ids[None, :, :]).all(-1)  # [B, B]
            negative_text, negative_image = sample_negatives(similarity, same_caption, self.negatives)
        rows = torch.arange(B, device=text_ids.device)
        image_index = torch.cat([rows, rows, negative_image])  # [3B]
        text_index = torch.cat([rows, negative_text, rows])
        labels = torch.cat([torch.ones_like(rows), torch.zeros_like(rows), torch.zeros_like(rows)])
        fused = self.fusion(vision_tower, text_tower, select_rows(vision, image_index), select_rows(text, text_index))
        out = FusionOutput(self.matching_head(fused), labels, fused)
        if self.mlm_head is not None:
            masked_ids, targets = mask_tokens(text_ids, text.mask, self.mlm_probability, self.vocab_size)
            masked = self.fusion(vision_tower, text_tower, vision, text_tower(masked_ids, text.mask))
            picked = targets != IGNORE  # [B, L]
            out.mlm_logits, out.mlm_targets = self.mlm_head(masked.text_tokens[picked]), targets[picked]
        return out
