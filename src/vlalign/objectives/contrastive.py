"""Contrastive image-text losses: CLIP's softmax InfoNCE and SigLIP's pairwise sigmoid.

Both gather features across ranks (with gradients) inside the loss, so the negatives are the
global batch whatever the number of processes (open_clip's ``gather_with_grad`` design; HF's
CLIP loss uses only the local batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign import dist
from vlalign.objectives.multi_positive import multi_positive_infonce


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
              negatives: torch.Tensor | None = None, negative_valid: torch.Tensor | None = None,
              paraphrases: torch.Tensor | None = None, paraphrase_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (Radford et al. 2021, Fig. 3). image, text: [B, E] unit-norm -> scalar.

    ``negatives`` [B, E] (unit-norm hard-negative captions, ``negative_valid`` [B] bool) become extra
    columns of the image->text softmax, as NegCLIP (Yuksekgonul et al. 2023, §5): every image is
    scored against every true caption and every (valid) negative of the global batch; the
    text->image direction is unchanged.

    ``paraphrases`` [B, E] (unit-norm positive paraphrases, ``paraphrase_valid`` [B] bool; SVLC, Doveh et
    al. 2023) become more columns, each a second positive of its own image: multi-positive InfoNCE
    (``paraphrase_infonce``).
    """
    if paraphrases is not None:
        return paraphrase_infonce(image, text, paraphrases, paraphrase_valid, logit_scale, negatives, negative_valid)
    all_image = dist.gather_with_grad(image)  # [world*B, E]
    all_text = dist.gather_with_grad(text)
    logits = logit_scale * all_image @ all_text.t()  # [N, N], row i = image i against every text
    labels = torch.arange(logits.shape[0], device=logits.device)
    image_to_text = logits
    if negatives is not None:
        image_to_text = torch.cat([logits, _negative_logits(all_image, negatives, negative_valid, logit_scale)], 1)
    return 0.5 * (F.cross_entropy(image_to_text, labels) + F.cross_entropy(logits.t(), labels))


def paraphrase_infonce(image: torch.Tensor, text: torch.Tensor, paraphrases: torch.Tensor,
                       paraphrase_valid: torch.Tensor, logit_scale: torch.Tensor,
                       negatives: torch.Tensor | None = None, negative_valid: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's InfoNCE where each image has two positive texts, its caption and its (valid) paraphrase.

    Columns are every caption, paraphrase and hard negative of the global batch. Image -> text: each
    image's softmax runs over all valid columns and scores the summed probability of its caption and
    paraphrase (``multi_positive_infonce``), so the two are not made to split it. Text -> image: each
    caption and valid paraphrase column's softmax over the images, its own image the target, so each of
    the two texts is still pulled to its image; negatives have no image, so they take part in the
    image -> text direction only (as in ``clip_loss``).
    """
    all_image = dist.gather_with_grad(image)  # [N, E]
    columns = [dist.gather_with_grad(text), dist.gather_with_grad(paraphrases)]  # [N, E] each
    n = all_image.shape[0]
    valid = [torch.ones(n, dtype=torch.bool, device=image.device), _gather_mask(paraphrase_valid)]
    own = torch.eye(n, dtype=torch.bool, device=image.device)
    positives = [own, own]
    if negatives is not None:
        columns.append(dist.gather_with_grad(negatives))
        valid.append(_gather_mask(negative_valid))
        positives.append(torch.zeros_like(own))
    logits = logit_scale * all_image @ torch.cat(columns).t()  # [N, 2N or 3N]
    return multi_positive_infonce(logits, torch.cat(positives, 1), torch.cat(valid))


def _gather_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B] bool of this rank -> [world*B] bool of every rank (masks travel as floats)."""
    return dist.gather_with_grad(mask.to(torch.float32)) > 0


def siglip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                negatives: torch.Tensor | None = None, negative_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise sigmoid loss (Zhai et al. 2023, Alg. 1): -mean over images of sum_j log σ(z_ij (t·x_i·y_j + b)).

    z_ij = +1 for the matched pair, -1 otherwise; normalised by the global batch size, as the paper.
    Hard negatives (as in ``clip_loss``) add one z = -1 term per image and valid negative.
    """
    all_image = dist.gather_with_grad(image)
    all_text = dist.gather_with_grad(text)
    logits = logit_scale * all_image @ all_text.t() + logit_bias  # [N, N]
    signs = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1
    total = -F.logsigmoid(signs * logits).sum()
    if negatives is not None:
        negative_logits = _negative_logits(all_image, negatives, negative_valid, logit_scale) + logit_bias
        total = total - F.logsigmoid(-negative_logits).sum()  # invalid ones: log σ(+inf) = 0
    return total / logits.shape[0]


def _negative_logits(all_image: torch.Tensor, negatives: torch.Tensor, valid: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """[N, world*B] scaled similarities of every image to every gathered negative; -inf where invalid."""
    all_negatives = dist.gather_with_grad(negatives)  # [world*B, E]
    all_valid = dist.gather_with_grad(valid.to(all_negatives.dtype)) > 0  # [world*B]
    logits = logit_scale * all_image @ all_negatives.t()
    return logits.masked_fill(~all_valid[None, :], float("-inf"))
