"""CG-VLM's contrastive alignment between projected patches and the LM's token embeddings.

Liu et al. 2023 (arXiv 2311.17945; reconstruction in METHODS.md §3.3; the official code is not
released). With V = connector(ViT(I)) ∈ R^{P×D} and E[t_l] the language model's *input* token
embeddings of the caption t_1..t_L (padding excluded):

    v̄ = Pool(V)                                            (mean over patches by default)
    s(I, T) = (1/L) Σ_l cos(v̄, E[t_l]) = v̂ · ( (1/L) Σ_l Ê[t_l] )     (hats: L2-normalised)

so the B×B image-sentence similarities of a batch are one matmul of the unit pooled images with
the mean of each caption's unit token embeddings. The paper averages the *similarities* rather than
the embeddings ("averaging token embeddings is ambiguous"); the identity above makes the two the
same computation as long as the mean of the unit vectors is not re-normalised. L_con is CLIP's
symmetric InfoNCE on s / τ with τ learnable. With a frozen LM the token embeddings are fixed
targets and only the connector (and τ) learn from L_con.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlalign import dist


def pool_patches(tokens: Tensor, mask: Tensor | None, pool: str = "mean") -> Tensor:
    """[B, P, D] projected patches (mask [B, P], True = real, or None) -> [B, D]."""
    if pool == "mean":
        if mask is None:
            return tokens.mean(dim=1)
        weights = mask.unsqueeze(-1).to(tokens.dtype)  # [B, P, 1]
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
    if pool == "max":
        if mask is not None:
            tokens = tokens.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        return tokens.amax(dim=1)
    raise ValueError(f"unknown pool {pool!r}: use 'mean' or 'max'")


def mean_unit_token_embedding(token_embeds: Tensor, token_mask: Tensor) -> Tensor:
    """(1/L) Σ_l Ê[t_l] over the masked tokens of each row: [B, L, D], [B, L] -> [B, D] (not re-normalised)."""
    unit = F.normalize(token_embeds, dim=-1)  # [B, L, D]
    weights = token_mask.unsqueeze(-1).to(unit.dtype)  # [B, L, 1]
    counts = weights.sum(dim=1)  # [B, 1]
    if bool((counts == 0).any()):
        raise ValueError("every caption needs at least one token for the image-sentence similarity; "
                         "a row of token_mask is empty")
    return (unit * weights).sum(dim=1) / counts


def image_sentence_vectors(image_tokens: Tensor, image_mask: Tensor | None, token_embeds: Tensor,
                           token_mask: Tensor, pool: str = "mean") -> tuple[Tensor, Tensor]:
    """v̂ (unit pooled image) and (1/L) Σ Ê[t_l] (mean unit token embedding): [B, D] each; s = v̂ · mean."""
    image = F.normalize(pool_patches(image_tokens, image_mask, pool), dim=-1)
    return image, mean_unit_token_embedding(token_embeds, token_mask)


def image_sentence_similarity(image_tokens: Tensor, image_mask: Tensor | None, token_embeds: Tensor,
                              token_mask: Tensor, pool: str = "mean") -> Tensor:
    """s[i, j] = mean over caption j's tokens of cos(Pool(image i), E[t]): [B_img, B_txt], one matmul."""
    image, sentence = image_sentence_vectors(image_tokens, image_mask, token_embeds, token_mask, pool)
    return image @ sentence.t()


def patch_token_contrastive_loss(image_tokens: Tensor, image_mask: Tensor | None, token_embeds: Tensor,
                                 token_mask: Tensor, logit_scale: Tensor, pool: str = "mean") -> Tensor:
    """L_con = ½ [CE(s/τ, rows) + CE(s/τ, columns)] over the global batch (negatives gathered across ranks)."""
    image, sentence = image_sentence_vectors(image_tokens, image_mask, token_embeds, token_mask, pool)
    all_image, all_sentence = dist.gather_with_grad(image), dist.gather_with_grad(sentence)
    logits = logit_scale * all_image @ all_sentence.t()  # [N, N]
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
