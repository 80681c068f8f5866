"""UniCL's label-aware contrastive loss (Yang et al. 2022, "Unified Contrastive Learning in
Image-Text-Label Space", §3.2, Eq. 3-5), the loss Prefix Conditioning trains with (Saito et al. 2023).

Image-label data and image-text data share one batch. Every image-caption pair is its own class;
samples of a labelled set ("a red circle") with the same class are positives of each other, so two
red circles in a batch are no longer pushed apart as CLIP would. With all classes distinct the loss
is CLIP's InfoNCE exactly.

    L_i2t = -1/N Σ_i 1/|P(i)| Σ_{k∈P(i)} log softmax_k(τ u_i·v)      (P(i): texts positive for image i)

and ``L_t2i`` the same over columns; the loss is their mean (UniCL sums them; the mean keeps the
scale of ``clip_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign import dist
from vlalign.models.prefix import LABEL


def unicl_targets(labels: torch.Tensor, text_types: torch.Tensor) -> torch.Tensor:
    """[N, N] bool: i and j are positives. labels [N] class index (-1 = none), text_types [N] (0 caption,
    1 label; ``vlalign.models.prefix.TEXT_TYPES``). A pair is positive when i == j, or when both are
    labelled-set samples of the same class."""
    pooled = (text_types == LABEL) & (labels >= 0)  # [N] samples whose class is shared
    same_class = labels[:, None] == labels[None, :]
    same_sample = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same_sample | (same_class & pooled[:, None] & pooled[None, :])


def unicl_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, labels: torch.Tensor,
               text_types: torch.Tensor) -> torch.Tensor:
    """image, text [B, E] unit-norm; labels, text_types [B] -> scalar, over the global batch."""
    all_image = dist.gather_with_grad(image)  # [N, E]
    all_text = dist.gather_with_grad(text)
    # Integer columns travel as floats (exact below 2^24), as the hard-negative validity does.
    all_labels = dist.gather_with_grad(labels.to(image.dtype)).long()
    all_types = dist.gather_with_grad(text_types.to(image.dtype)).long()
    positives = unicl_targets(all_labels, all_types).to(image.dtype)  # [N, N], symmetric
    logits = logit_scale * all_image @ all_text.t()  # [N, N]
    i2t = -(positives * F.log_softmax(logits, dim=1)).sum(1) / positives.sum(1)
    t2i = -(positives.t() * F.log_softmax(logits.t(), dim=1)).sum(1) / positives.sum(0)
    return 0.5 * (i2t.mean() + t2i.mean())
