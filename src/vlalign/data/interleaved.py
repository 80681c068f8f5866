"""Interleaved image-text documents for VL-GPT's decoder (``vlalign.models.interleaved``): each document is a
few (caption, image) pairs, each pair in one of two orders, ``caption [IMG]`` (the text leads to the image:
generation) or ``[IMG] caption`` (the image leads to the text: description).

Row layout, right padded: ``[BOS] pair pair ... [EOS] [PAD]...`` with one ``image_token_id`` slot per image; the
row's images go in ``image_embeds`` [B, K, E] in slot order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def interleave_rows(documents: list[list[tuple[list[int], bool]]], bos_id: int, eos_id: int, pad_id: int,
                    image_token_id: int) -> tuple[Tensor, Tensor]:
    """Each document a list of (caption token ids, image first?) -> ids, mask [B, S] (True = real)."""
    rows = []
    for document in documents:
        row = [bos_id]
        for caption, image_first in document:
            row += [image_token_id, *caption] if image_first else [*caption, image_token_id]
        rows.append(row + [eos_id])
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, row in enumerate(rows):
        mask[i, : len(row)] = True
    return ids, mask


def sample_documents(rng: np.random.Generator, num_items: int, batch_size: int, pairs_per_document: int,
                     image_first: float = 0.5) -> tuple[list[list[int]], list[list[bool]]]:
    """Which items each document holds (distinct within a document) and each pair's order."""
    items = [rng.choice(num_items, size=pairs_per_document, replace=False).tolist() for _ in range(batch_size)]
    orders = [(rng.random(pairs_per_document) < image_first).tolist() for _ in range(batch_size)]
    return items, orders


def document_batch(rng: np.random.Generator, caption_ids: list[list[int]], image_embeds: Tensor, batch_size: int,
                   pairs_per_document: int, specials: dict[str, int], image_first: float = 0.5) -> dict[str, Tensor]:
    """A batch of random documents over items (caption_ids[i], image_embeds[i] [E]): ids, mask, image_embeds [B, K, E]."""
    items, orders = sample_documents(rng, len(caption_ids), batch_size, pairs_per_document, image_first)
    documents = [[(caption_ids[i], first) for i, first in zip(row, order)] for row, order in zip(items, orders)]
    ids, mask = interleave_rows(documents, specials["bos"], specials["eos"], specials["pad"], specials["image"])
    return {"ids": ids, "mask": mask, "image_embeds": image_embeds[torch.tensor(items)]}  # [B, K, E]
