"""Attribute streams (MeDSLIP: Fan et al. 2024, "MeDSLIP: Medical Dual-Stream Language-Image
Pre-training", §3.1-3.3): the image is read by one projection head per attribute stream (there:
anatomy and pathology; on the shapes world: shape and colour), each stream is contrasted with its own
attribute text, and the streams of one image are kept apart so that each carries its own attribute.

- alignment: stream s of image i against the attribute texts of stream s over the batch, images with
  the same attribute text being positives of each other (``grouped_clip_loss``);
- separation: the squared cosine between two streams of the same image, averaged over images and
  stream pairs, 0 when the streams are orthogonal. MeDSLIP regularises the streams' relation with an
  intra-image contrast over co-occurring anatomy-pathology pairs; the catalogue asks for streams that
  are pushed apart, which this term does directly.
"""

from __future__ import annotations

import itertools

import torch

from vlalign.objectives.multi_positive import grouped_clip_loss


def stream_alignment_loss(streams: dict[str, torch.Tensor], texts: dict[str, torch.Tensor],
                          text_ids: dict[str, torch.Tensor], logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean over streams of the grouped InfoNCE of stream embeddings [B, E] against their attribute texts [B, E]
    (``text_ids`` [B, L] decide which texts are the same)."""
    return torch.stack([grouped_clip_loss(streams[s], texts[s], text_ids[s], logit_scale) for s in streams]).mean()


def stream_separation_loss(streams: list[torch.Tensor]) -> torch.Tensor:
    """Mean over images and stream pairs of cos(stream a, stream b)^2; streams are unit-norm [B, E]."""
    pairs = [((a * b).sum(-1) ** 2).mean() for a, b in itertools.combinations(streams, 2)]
    return torch.stack(pairs).mean()
