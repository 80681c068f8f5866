"""Evaluation with FILIP's token-wise similarity, for runs trained with it (``Aligner.late_interaction``).

Zero-shot: a set of tokens has no mean embedding to ensemble, so a class's score is the mean of the
image-to-text similarity s^I over the class's prompts; each distinct prompt is scored once, however
many label sets share it. Retrieval: s^I ranks texts for an image, s^T images for a text (FILIP §3.1.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vlalign.api import Aligner
from vlalign.objectives.filip import late_interaction, paired_late_interaction

CHUNK = 16  # images scored at once: [16, texts, patches, tokens] floats


def _trim(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing token columns that are padding in every text (they cost compute, never score)."""
    used = int(mask.any(0).nonzero().max()) + 1
    return tokens[:, :used], mask[:, :used]


def token_similarities(model: Aligner, images: Sequence[np.ndarray] | torch.Tensor,
                       texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(s^I, s^T), each [N images, N texts]."""
    image_tokens, image_mask = model.encode_image_tokens(images)
    text_tokens, text_mask = _trim(*model.encode_text_tokens(texts))
    with torch.inference_mode():
        return late_interaction(image_tokens, image_mask, text_tokens, text_mask, chunk=CHUNK)


def paired_similarities(model: Aligner, image_tokens: tuple[torch.Tensor, torch.Tensor], image_index: torch.Tensor,
                        texts: Sequence[str]) -> torch.Tensor:
    """s^I [M] of image ``image_index[m]`` (rows of the encoded ``image_tokens``) against ``texts[m]``."""
    text_tokens, text_mask = _trim(*model.encode_text_tokens(texts))
    tokens, mask = image_tokens
    with torch.inference_mode():
        return paired_late_interaction(tokens[image_index], mask[image_index], text_tokens, text_mask)[0]


class PromptScores:
    """s^I of N images against a fixed set of prompts; ``class_logits`` averages them per class."""

    def __init__(self, model: Aligner, images: Sequence[np.ndarray], prompts: Sequence[str]):
        self.column = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        self.scores = token_similarities(model, images, list(self.column))[0]  # [N, P]

    def class_logits(self, class_prompts: list[list[str]]) -> torch.Tensor:
        """K lists of prompts -> [N, K]."""
        return torch.stack([self.scores[:, [self.column[p] for p in prompts]].mean(1) for prompts in class_prompts],
                           dim=1)
