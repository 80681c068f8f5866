"""Dataset-type prefix tokens for the text tower (Prefix Conditioning: Saito et al. 2023, "Prefix
Conditioning Unifies Language and Label Supervision", §3.2).

Captions and class-name prompts ("a red circle") differ in style and in what they leave out; trained
on their union a text tower learns a compromise. A learned prefix per text type tells the tower
which kind of text it reads, so the type-specific bias goes into the prefix and the rest is shared.
At zero-shot the caption prefix is used (§3.3: it generalises better than the label prefix).
"""

from __future__ import annotations

import torch
from torch import nn

TEXT_TYPES = ("caption", "label")  # index = the type id in a batch's ``text_types``
CAPTION, LABEL = 0, 1


class DatasetPrefix(nn.Module):
    """``num_tokens`` learned embeddings per text type; ``forward(types [B]) -> [B, P, D]``."""

    def __init__(self, num_tokens: int, width: int):
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens={num_tokens}: a prefix needs at least one token")
        # One parameter for every type, so a batch without labels still gives it a (partly zero) gradient
        # and data-parallel training sees every parameter used.
        self.embedding = nn.Parameter(torch.randn(len(TEXT_TYPES), num_tokens, width) * 0.02)

    def forward(self, types: torch.Tensor) -> torch.Tensor:
        return self.embedding[types]  # [B, P, D]

    def caption(self, batch_size: int) -> torch.Tensor:
        """The caption prefix for ``batch_size`` texts (inference default)."""
        return self.embedding[CAPTION].expand(batch_size, -1, -1)
