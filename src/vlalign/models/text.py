"""Text transformer tower (CLIP-style): token + position embeddings, pre-LN blocks, pooled output."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlalign.models.layers import Transformer, init_weights, padding_attn_mask


@dataclass
class TextFeatures:
    pooled: torch.Tensor  # [B, D]
    tokens: torch.Tensor | None  # [B, L, D] after the final norm; None if pooled_only
    mask: torch.Tensor  # [B, L] bool, True = real token
    intermediates: list[torch.Tensor]  # per block [B, L, D] (the last [B, 1, D] if pooled_only)


class TextTransformer(nn.Module):
    """``pool="eot"``: causal attention and the last real token (CLIP, Radford et al. 2021 §2.4);
    ``pool="mean"``: bidirectional attention and the mean over real tokens.

    ``forward(..., prefix=[B, P, D])`` prepends P learned embeddings to the token embeddings (Prefix
    Conditioning); ``context_length`` must then cover the P prefix positions too. The prefix is
    attended to and pooled over like a token, but left out of the returned tokens and mask.
    """

    def __init__(self, vocab_size: int, context_length: int, width: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, pool: str = "eot", activation: str = "gelu"):
        super().__init__()
        self.pool = pool
        self.width = width
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.zeros(1, context_length, width))
        self.transformer = Transformer(width, depth, heads, mlp_ratio, activation)
        self.ln_final = nn.LayerNorm(width)
        init_weights(self)
        nn.init.trunc_normal_(self.pos, std=0.01)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, prefix: torch.Tensor | None = None,
                pooled_only: bool = False) -> TextFeatures:
        """ids, mask [B, L] (right-padded); ``prefix`` [B, P, D] learned vectors before the text (prefix
        conditioning). ``pooled_only``: the caller needs ``pooled`` alone; with EOT pooling and no prefix the
        padding columns after the longest caption are dropped and the last block runs for the EOT token only
        (causal attention: the same pooled feature, fewer FLOPs) and ``tokens`` is None."""
        if pooled_only and self.pool == "eot" and prefix is None:
            return self._pooled_eot(ids, mask)
        B, L = ids.shape
        x = self.token_embedding(ids)  # [B, L, D]
        P = 0
        if prefix is not None:
            P = prefix.shape[1]
            x = torch.cat([prefix.to(x.dtype), x], dim=1)  # [B, P+L, D]
            mask = torch.cat([mask.new_ones(B, P), mask], dim=1)
        x = x + self.pos[:, : P + L]
        causal = self.pool == "eot"
        x, intermediates = self.transformer(x, padding_attn_mask(mask, causal=causal))
        if P:  # back to the caller's L token positions; pooling below still sees the prefix through attention
            x, mask, intermediates = x[:, P:], mask[:, P:], [h[:, P:] for h in intermediates]
        return self.finish(x, mask, intermediates)

    def finish(self, hidden: torch.Tensor, mask: torch.Tensor, intermediates: list[torch.Tensor]) -> TextFeatures:
        """Final norm and pooling of the last block's output ``hidden`` [B, L, D]; the fusion layers
        (``vlalign.models.fusion``) end their pass through the tower's top blocks here too."""
        x = self.ln_final(hidden)
        return TextFeatures(pooled=self.pool_tokens(x, mask), tokens=x, mask=mask, intermediates=intermediates)

    def pool_tokens(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, D] tokens -> [B, D] by the tower's rule: the EOS token ("eot") or the mean of real tokens."""
        if self.pool == "eot":
            last = mask.long().sum(1).clamp_min(1) - 1  # [B] index of the EOS token (right padding)
            return x[torch.arange(x.shape[0], device=x.device), last]
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp_min(1)

    def _pooled_eot(self, ids: torch.Tensor, mask: torch.Tensor) -> TextFeatures:
        # Under causal attention a real token never sees the padding after it, so the columns past the
        # longest caption change nothing: drop them (captions are usually well shorter than the context).
        # Not inside torch.compile: a data-dependent length would break the graph (callers such as
        # ``Aligner.encode_tokens`` cut their chunks before).
        longest = ids.shape[1] if torch.compiler.is_compiling() else max(int(mask.sum(1).max()), 1)
        ids, short_mask = ids[:, :longest], mask[:, :longest]
        x = self.token_embedding(ids) + self.pos[:, :longest]  # [B, L, D]
        last = short_mask.long().sum(1).clamp_min(1) - 1  # [B] index of the EOS token
        x, intermediates = self.transformer(x, padding_attn_mask(short_mask, causal=True), last_rows=last)
        return TextFeatures(pooled=self.ln_final(x[:, 0]), tokens=None, mask=mask, intermediates=intermediates)
