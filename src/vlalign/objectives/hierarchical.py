"""Hierarchical contrast at caption, clause and word level (VELVET-Med: Zhang et al. 2025, "VELVET-Med:
Vision and Efficient Language Pre-training for Volumetric Imaging Tasks in Medicine", §3.3: TriBERT
encodes a report at word, sentence and report level and each level is contrasted with the volume).

The shapes captions are single sentences whose clauses describe separate objects or facts, so the
middle level is the clause (``vlalign.data.views.split_clauses``), each embedded alone by the text
tower:

- caption: CLIP's InfoNCE of pooled image and caption;
- clause: the pooled image against every clause of the global batch. An image's positives are its
  own clauses and every clause with the same text ("one shape" is true of every single-object
  scene); a clause's positives are the images having it. Both directions score the summed
  probability of the positives (``multi_positive_infonce``): images sharing a clause do not compete
  for it, and each clause is still pulled to the images that have it by its own column;
- word: token-patch late interaction (FILIP, ``vlalign.objectives.filip``): each word takes its most
  similar patch and each patch its most similar word.
"""

from __future__ import annotations

import torch

from vlalign import dist
from vlalign.objectives.multi_positive import gather_keys, multi_positive_infonce


def clause_positives(clause_ids: torch.Tensor, clause_valid: torch.Tensor) -> torch.Tensor:
    """[N, M, L] ids, [N, M] valid -> [N, N*M] bool: image i and clause (j, m) share a clause text."""
    N, M, L = clause_ids.shape
    flat = clause_ids.reshape(N * M, L)
    valid = clause_valid.reshape(N * M)
    same = (flat[:, None, :] == flat[None, :, :]).all(-1) & valid[:, None] & valid[None, :]  # [N*M, N*M]
    return same.view(N, M, N * M).any(1)  # [N, N*M]: some clause of image i equals column (j, m)


def clause_loss(image: torch.Tensor, clauses: torch.Tensor, clause_ids: torch.Tensor, clause_valid: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
    """image [B, E], clauses [B, M, E] (unit-norm where valid), clause_ids [B, M, L], clause_valid [B, M]."""
    all_image = dist.gather_with_grad(image)  # [N, E]
    all_clauses = dist.gather_with_grad(clauses)  # [N, M, E]
    all_ids = gather_keys(clause_ids)
    all_valid = gather_keys(clause_valid).bool()
    N, M, E = all_clauses.shape
    logits = logit_scale * all_image @ all_clauses.reshape(N * M, E).t()  # [N, N*M]
    return multi_positive_infonce(logits, clause_positives(all_ids, all_valid), all_valid.reshape(N * M))
