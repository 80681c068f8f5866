"""Generative (captioning) alignment loss: next-token cross-entropy on caption tokens only.

This is L_gen of LLaVA / CG-VLM (METHODS.md §3.3): −Σ log p(t_l | image prefix, t_<l) over the
caption (or answer) tokens. The image prefix, the prompt and padding are never targets.

Normalisation: the summed cross-entropy is divided by the number of target tokens. A batch split
into micro-batches k with n_k target tokens each (N = Σ n_k) therefore satisfies

    caption_loss(batch) = Σ_k (n_k / N) · caption_loss(micro-batch k)

or, equivalently, passing ``num_tokens=N`` to every micro-batch makes the plain sum of their losses
equal the full-batch loss (the form to use with gradient accumulation or data parallelism, where
N is the total over all micro-batches and ranks of one optimizer step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def next_token_targets(ids: Tensor, target_mask: Tensor, prefix_len: int = 0) -> tuple[Tensor, Tensor]:
    """Align text targets with decoder outputs over ``[prefix, ids]``.

    Position s of the decoder predicts the entry at s + 1, so token ``ids[:, l]`` (at sequence
    position P + l) is the target of position P + l − 1. ``target_mask`` [B, L] is True for the tokens
    to learn (caption/answer), False for the prompt and padding.

    Returns ``targets`` and ``loss_mask``, both [B, P+L], ready for ``caption_loss``. With no prefix
    the first token has nothing before it and is never a target.
    """
    if ids.shape != target_mask.shape or ids.dim() != 2:
        raise ValueError(f"ids and target_mask must both be [B, L], got {tuple(ids.shape)} and {tuple(target_mask.shape)}")
    if prefix_len < 0:
        raise ValueError(f"prefix_len must be >= 0, got {prefix_len}")
    batch, length = ids.shape
    total = prefix_len + length
    targets = torch.zeros(batch, total, dtype=ids.dtype, device=ids.device)
    loss_mask = torch.zeros(batch, total, dtype=torch.bool, device=ids.device)
    first = 0 if prefix_len else 1  # index of the first token that has a predicting position
    targets[:, prefix_len + first - 1 : total - 1] = ids[:, first:]
    loss_mask[:, prefix_len + first - 1 : total - 1] = target_mask[:, first:].bool()
    return targets, loss_mask


def caption_loss(logits: Tensor, targets: Tensor, loss_mask: Tensor, num_tokens: int | Tensor | None = None) -> Tensor:
    """Cross-entropy of ``logits`` [B, S, V] against ``targets`` [B, S] where ``loss_mask`` [B, S] is True.

    ``targets[b, s]`` is the token position s should predict (see ``next_token_targets``); entries
    where the mask is False are ignored whatever they hold. The sum is divided by the number of
    masked positions, or by ``num_tokens`` when given (see the module docstring). A batch with no
    target token gives 0, still attached to the graph.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2] or loss_mask.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits [B, S, V] with targets and loss_mask [B, S]; got logits {tuple(logits.shape)}, "
            f"targets {tuple(targets.shape)}, loss_mask {tuple(loss_mask.shape)}"
        )
    if loss_mask.dtype != torch.bool:
        raise ValueError(f"loss_mask must be a bool tensor (True = target), got dtype {loss_mask.dtype}")
    selected_logits = logits[loss_mask].float()  # [N, V]; float32 so low-precision logits lose nothing here
    total = F.cross_entropy(selected_logits, targets[loss_mask], reduction="sum")
    if num_tokens is None:
        return total / loss_mask.sum().clamp(min=1)
    if not num_tokens > 0:
        raise ValueError(f"num_tokens must be > 0 (the target-token count of the whole step), got {num_tokens}")
    return total / num_tokens
