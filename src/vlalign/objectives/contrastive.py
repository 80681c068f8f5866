"""Contrastive image-text losses: CLIP's softmax InfoNCE and SigLIP's pairwise sigmoid.

Both gather features across ranks (with gradients) inside the loss, so the negatives are the
global batch whatever the number of processes (open_clip's ``gather_with_grad`` design; HF's
CLIP loss uses only the local batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign import dist


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (Radford et al. 2021, Fig. 3). image, text: [B, E] unit-norm -> scalar."""
    all_image = dist.gather_with_grad(image)  # [world*B, E]
    all_text = dist.gather_with_grad(text)
    logits = logit_scale * all_image @ all_text.t()  # [N, N], row i = image i against every text
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def siglip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> torch.Tensor:
    """Pairwise sigmoid loss (Zhai et al. 2023, Alg. 1): -mean over images of sum_j log σ(z_ij (t·x_i·y_j + b)).

    z_ij = +1 for the matched pair, -1 otherwise; normalised by the global batch size, as the paper.
    """
    all_image = dist.gather_with_grad(image)
    all_text = dist.gather_with_grad(text)
    logits = logit_scale * all_image @ all_text.t() + logit_bias  # [N, N]
    signs = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(signs * logits).sum() / logits.shape[0]
