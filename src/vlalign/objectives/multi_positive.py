"""InfoNCE with several positives per row and column, and the "same text, same target" pairing.

Auxiliary objectives often contrast a short text that many samples share: a region caption ("a small
red circle"), an attribute ("red and blue"), a cached description ("a photo of the coat"), a clause
("one shape"). With CLIP's one-positive targets two images that share such a text would be pushed
apart by it; here every text identical to an image's own is a positive too (UniCL's rule, Yang et
al. 2022 §3.2, with "same class" read as "same text"), and a row or column is scored by the summed
probability of its positives (MIL-NCE's form, Miech et al. 2020):

    L_rows = mean_i  -log Σ_{k∈P_i} softmax_k(s_i·)        (rows with a positive)
    L_cols = mean_j  -log Σ_{i∈Q_j} softmax_i(s_·j)        (valid columns with a positive)
    L = (L_rows + L_cols) / 2

Why the sum and not the mean of the positives' log-probabilities (UniCL's form, and SupCon's L_out,
Khosla et al. 2020): under the mean each positive's target is 1/|P|, so a positive holding more than
its share is pushed down for the others' sake, which is what a negative does. With exact duplicate
texts that makes the loss CLIP's exactly (the images sharing a text still split its column, each pushed
to 1/k of it). Under the sum only the mass outside the positives is penalised: images sharing a text
no longer compete for it, and the loss of a row with k identical positive columns is CLIP's minus log k.

With one positive per row and column (all texts distinct) it is CLIP's symmetric InfoNCE exactly.
"""

from __future__ import annotations

import torch

from vlalign import dist


def multi_positive_infonce(logits: torch.Tensor, positives: torch.Tensor,
                           column_valid: torch.Tensor | None = None) -> torch.Tensor:
    """logits [N, M] (scaled similarities), positives [N, M] bool, column_valid [M] bool (None: all).

    Invalid columns take no part in any softmax; rows and columns without a positive are left out.
    """
    if column_valid is not None:
        positives = positives & column_valid[None, :]
        logits = logits.masked_fill(~column_valid[None, :], float("-inf"))
    # Columns are the rows of the transpose; an invalid column has no positive, so it drops out there.
    return 0.5 * (_positive_nll(logits, positives) + _positive_nll(logits.t(), positives.t()))


def _positive_nll(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """logits [R, C], positives [R, C] bool -> mean over rows with a positive of -log Σ_{positive c} softmax_c."""
    # Rows without a positive are dropped first: their positives' log-sum-exp is -inf (an invalid column's
    # total one too), so no inf or NaN reaches the mean or the backward.
    has_positive = positives.any(1)
    logits, positives = logits[has_positive], positives[has_positive]  # [R', C]
    log_all = torch.logsumexp(logits, 1)  # [R']
    log_positive = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), 1)  # [R']
    return (log_all - log_positive).mean()


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
