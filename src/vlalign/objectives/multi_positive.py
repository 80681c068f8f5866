"""InfoNCE with several positives per row and column, and the "same text, same target" pairing.

Auxiliary objectives often contrast a short text that many samples share: a region caption ("a small
red circle"), an attribute ("red and blue"), a cached description ("a photo of the coat"), a clause
("one shape"). With CLIP's one-positive targets two images that share such a text would be pushed
apart by it; here every text identical to an image's own is a positive too (UniCL's rule, Yang et
al. 2022 §3.2, with "same class" read as "same text"):

    L_rows = mean_i  -1/|P_i| Σ_{k∈P_i} log softmax_k(s_i·)        (rows with a positive)
    L_cols = mean_j  -1/|Q_j| Σ_{i∈Q_j} log softmax_i(s_·j)        (valid columns with a positive)
    L = (L_rows + L_cols) / 2

With one positive per row and column (all texts distinct) it is CLIP's symmetric InfoNCE exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign import dist


def multi_positive_infonce(logits: torch.Tensor, positives: torch.Tensor,
                           column_valid: torch.Tensor | None = None) -> torch.Tensor:
    """logits [N, M] (scaled similarities), positives [N, M] bool, column_valid [M] bool (None: all).

    Invalid columns take no part in any softmax; rows and columns without a positive are left out.
    """
    if column_valid is None:
        column_valid = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
    positives = positives & column_valid[None, :]
    logits = logits.masked_fill(~column_valid[None, :], float("-inf"))
    weights = positives.to(logits.dtype)
    # Rows: softmax over the valid columns. where() keeps -inf * 0 out of the sums.
    row_logp = F.log_softmax(logits, dim=1).where(positives, logits.new_zeros(()))
    row_count = weights.sum(1)
    rows = row_count > 0
    row_loss = -(row_logp.sum(1)[rows] / row_count[rows]).mean()
    # Columns: softmax over every row, for the valid columns only.
    valid_logits = logits[:, column_valid]  # [N, M']
    col_positives = positives[:, column_valid]
    col_logp = F.log_softmax(valid_logits, dim=0).where(col_positives, logits.new_zeros(()))
    col_count = col_positives.to(logits.dtype).sum(0)
    cols = col_count > 0
    col_loss = -(col_logp.sum(0)[cols] / col_count[cols]).mean()
    return 0.5 * (row_loss + col_loss)


def same_rows(keys: torch.Tensor) -> torch.Tensor:
    """keys [N, ...] (token ids, or one id per row) -> [N, N] bool: rows i and j are equal."""
    flat = keys.reshape(keys.shape[0], -1)
    return (flat[:, None, :] == flat[None, :, :]).all(-1)


def gather_keys(keys: torch.Tensor) -> torch.Tensor:
    """Integer keys of every rank (they travel as floats: exact below 2^24, token ids and table rows)."""
    return dist.gather_with_grad(keys.to(torch.float32)).long()


def grouped_clip_loss(a: torch.Tensor, b: torch.Tensor, keys: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of paired rows a[i] <-> b[i] (unit-norm [B, E]) over the global batch, where every
    pair whose ``keys`` [B, ...] (the texts' token ids, or their row in a table) equal row i's is a positive."""
    all_a, all_b = dist.gather_with_grad(a), dist.gather_with_grad(b)  # [N, E]
    positives = same_rows(gather_keys(keys))  # [N, N]
    return multi_positive_infonce(logit_scale * all_a @ all_b.t(), positives)
