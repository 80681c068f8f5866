"""FILIP's token-wise late interaction (Yao et al. 2022, "FILIP: Fine-grained Interactive
Language-Image Pre-Training", §3.1.1), the "token-wise similarity" Wukong benchmarks (Gu et al. 2022).

Image i has n1 patch embeddings x_k, text j has n2 real token embeddings y_r (all unit-norm). Each
patch takes its best-matching token, and the image-to-text similarity is their mean; the
text-to-image similarity is the mirror image:

    s^I_ij = 1/n1 · Σ_k max_r x_k·y_r        s^T_ij = 1/n2 · Σ_r max_k x_k·y_r

Padded text tokens never win a max and are not counted in n2 (§3.1.1: "we exclude the padded
tokens"). The two directions are two different matrices: the image->text InfoNCE uses s^I, the
text->image one s^T (Eq. 3-4). Negatives come from the global batch (gathered with gradients, as
``clip_loss``). Every pair costs n1·n2 dot products, so memory is bounded by scoring ``chunk``
images at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign import dist


def late_interaction(image_tokens: torch.Tensor, image_mask: torch.Tensor, text_tokens: torch.Tensor,
                     text_mask: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(s^I, s^T), each [Ni, Nt]: image i against text j in both directions.

    image_tokens [Ni, T, E], image_mask [Ni, T]; text_tokens [Nt, L, E], text_mask [Nt, L]; masks True
    for real tokens. Every image and text needs at least one real token.
    """
    text_valid = text_mask[None, :, None, :]  # [1, Nt, 1, L]
    i2t, t2i = [], []
    for start in range(0, image_tokens.shape[0], chunk):
        x, x_mask = image_tokens[start : start + chunk], image_mask[start : start + chunk]
        sim = torch.einsum("ite,jle->ijtl", x, text_tokens)  # [c, Nt, T, L]
        valid = x_mask[:, None, :, None] & text_valid  # [c, Nt, T, L]
        sim = sim.masked_fill(~valid, float("-inf"))
        # max(dim) keeps only the argmax for backward (amax would keep the whole [c, Nt, T, L] tensor)
        i2t.append(_masked_mean(sim.max(3).values, x_mask[:, None, :]))  # best token per patch, mean over patches
        t2i.append(_masked_mean(sim.max(2).values, text_mask[None, :, :]))  # best patch per token, mean over tokens
    return torch.cat(i2t), torch.cat(t2i)


def paired_late_interaction(image_tokens: torch.Tensor, image_mask: torch.Tensor, text_tokens: torch.Tensor,
                            text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s^I, s^T), each [N], for N aligned (image, text) rows: the diagonal of ``late_interaction``
    without the N^2 cost (scoring a few candidate texts per image)."""
    sim = torch.einsum("nte,nle->ntl", image_tokens, text_tokens)  # [N, T, L]
    valid = image_mask[:, :, None] & text_mask[:, None, :]
    sim = sim.masked_fill(~valid, float("-inf"))
    return _masked_mean(sim.max(2).values, image_mask), _masked_mean(sim.max(1).values, text_mask)


def _masked_mean(best: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``best`` over its last axis where ``mask`` holds (masked entries are -inf, set to 0)."""
    best = best.masked_fill(~mask, 0.0)
    return best.sum(-1) / mask.sum(-1).clamp_min(1).to(best.dtype)


def filip_loss(image_tokens: torch.Tensor, image_mask: torch.Tensor, text_tokens: torch.Tensor,
               text_mask: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE on the token-wise similarities (FILIP Eq. 3-4) over the global batch. -> scalar."""
    all_image = dist.gather_with_grad(image_tokens)  # [N, T, E]
    all_image_mask = dist.gather_with_grad(image_mask.to(image_tokens.dtype)) > 0
    all_text = dist.gather_with_grad(text_tokens)  # [N, L, E]
    all_text_mask = dist.gather_with_grad(text_mask.to(text_tokens.dtype)) > 0
    used = int(all_text_mask.any(0).nonzero().max()) + 1  # drop trailing columns that are padding everywhere
    all_text, all_text_mask = all_text[:, :used], all_text_mask[:, :used]
    i2t, t2i = late_interaction(all_image, all_image_mask, all_text, all_text_mask)  # [N, N] each
    labels = torch.arange(i2t.shape[0], device=i2t.device)
    return 0.5 * (F.cross_entropy(logit_scale * i2t, labels) + F.cross_entropy(logit_scale * t2i.t(), labels))
