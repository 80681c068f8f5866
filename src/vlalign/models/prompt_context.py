"""CoOp's learnable prompt context (Zhou et al. 2022, "Learning to Prompt for Vision-Language Models", §3.2).

A class is described by ``[V]_1 ... [V]_M [CLASS]``: M context vectors shared by all classes, learned,
followed by the class name's token embeddings; the rest of the model stays frozen. Here the vectors go
in front of the tokenised class name with its BOS token removed, and the context is initialised from the
embeddings of ``BOS + init_text`` (e.g. "a photo of the"): at initialisation the prompt is exactly the
hand-written one, at the positions the text tower was trained with, so prompt learning starts from the
zero-shot classifier (CoOp's "a photo of a" initialisation).
"""

from __future__ import annotations

import torch
from torch import nn


class PromptContext(nn.Module):
    """``context`` [M, D]; ``class_embeddings(model, ids, mask)`` -> [K, E] unit-norm class embeddings."""

    def __init__(self, context: torch.Tensor):
        super().__init__()
        self.context = nn.Parameter(context.detach().clone())  # [M, D]

    @classmethod
    def from_text(cls, model: nn.Module, tokenizer, init_text: str) -> "PromptContext":
        """M = the tokens of BOS + ``init_text``; their embeddings in ``model``'s text tower as the start."""
        ids = tokenizer.encode(init_text)[:-1]  # BOS ... (no EOS)
        with torch.no_grad():
            return cls(model.text.token_embedding.weight[torch.tensor(ids)])

    def class_embeddings(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [K, L]: each class name tokenised *without* its BOS (right-padded) -> [K, E]."""
        longest = int(mask.sum(1).max())
        ids, mask = ids[:, :longest], mask[:, :longest]  # positions are scarce: prefix + name must fit
        M, K = self.context.shape[0], ids.shape[0]
        if M + longest > model.text.context_length:
            raise ValueError(f"{M} context vectors + {longest} class-name tokens exceed the text tower's "
                             f"{model.text.context_length} positions; use a shorter init text")
        features = model.text(ids, mask, self.context.unsqueeze(0).expand(K, -1, -1))
        return model.text_head(features)[0]
