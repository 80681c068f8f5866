"""A soft committee of shallow text towers (Tiny language models, catalogue issue 12 item 9; METHODS.md §4
row 30): the accuracy of one deep pre-trained encoder (BERT-6) is matched by averaging the outputs of
several independent shallow ones (BERT-1), which run in parallel and so with less latency.

``model.text.committee=K`` builds K ``TextTransformer`` members, each with its own embeddings and blocks
(``model.text.depth`` sets how shallow), and averages their outputs; the one projection head after it
then sees the committee's mean feature. In the paper the members are pre-trained and fine-tuned on their
own and their class outputs averaged; here they are trained together through the mean, which is the
same as averaging K projected outputs under one shared linear head.
"""

from __future__ import annotations

import torch
from torch import nn

from vlalign.models.text import TextFeatures, TextTransformer


def _mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(tensors).mean(0)


class TextCommittee(nn.Module):
    """K independent text towers of one shape; every output is the members' mean."""

    def __init__(self, members: list[TextTransformer]):
        super().__init__()
        self.members = nn.ModuleList(members)
        first = members[0]
        self.width, self.context_length, self.pool = first.width, first.context_length, first.pool

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, prefix: torch.Tensor | None = None,
                pooled_only: bool = False) -> TextFeatures:
        """As ``TextTransformer.forward``: pooled [B, D], tokens [B, L, D] (or None) and each block's
        intermediates are the members' means; ``mask`` is the members' common one."""
        outs = [member(ids, mask, prefix, pooled_only) for member in self.members]
        tokens = None if outs[0].tokens is None else _mean([o.tokens for o in outs])
        intermediates = [_mean(list(layer)) for layer in zip(*(o.intermediates for o in outs))]
        return TextFeatures(pooled=_mean([o.pooled for o in outs]), tokens=tokens, mask=outs[0].mask,
                            intermediates=intermediates)
