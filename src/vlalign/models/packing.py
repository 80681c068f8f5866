"""Multimodal sequence packing for the generative stage (Open-Qwen2VL, arXiv 2504.00595 §3; MindVL).

A batch of examples ``[image prefix, text]`` of different lengths, right padded to the longest, spends
the decoder's compute on padding. Packing places the real entries of several examples one after the
other in rows of a fixed length, each example a *segment*: attention is causal inside a segment and
blocked across segments (a block-diagonal causal mask), and positions restart at 0 in every segment.
Each example then sees exactly what it sees unpacked, so the loss is the same (``tests/test_packing.py``),
while the rows hold far less padding.

Rows are filled first-fit decreasing (longest example first, into the first row with room), a
bin-packing heuristic that needs at most about 11/9 of the optimal number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PackedBatch:
    """Where every real entry of a padded batch [B, S_pad] goes in the packed rows [R, S]."""

    index: Tensor  # [B, S_pad] flat position row * S + column of each entry in the rows; -1 for padding
    positions: Tensor  # [R, S] position id of each entry within its example; 0 for padding
    segments: Tensor  # [R, S] which example (batch index) an entry belongs to; -1 for padding
    num_rows: int
    row_length: int
    padded_entries: int  # B * S_pad: the size of the unpacked batch
    real_entries: int

    @property
    def padding_fraction(self) -> float:
        """The share of the rows that is padding (unpacked: 1 - real / (B * S_pad))."""
        return 1 - self.real_entries / (self.num_rows * self.row_length)

    @property
    def unpacked_padding_fraction(self) -> float:
        return 1 - self.real_entries / self.padded_entries


def first_fit_decreasing(lengths: list[int], row_length: int) -> list[int]:
    """The row of each item, packing items of ``lengths`` into rows of ``row_length`` (longest first)."""
    too_long = [n for n in lengths if n > row_length]
    if too_long:
        raise ValueError(f"an example of {max(too_long)} entries does not fit a packed row of {row_length}; raise "
                         "data.pack_length to at least the image tokens plus data.context_length")
    rows_free: list[int] = []
    row_of = [0] * len(lengths)
    for item in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, free in enumerate(rows_free) if free >= lengths[item]), len(rows_free))
        if row == len(rows_free):
            rows_free.append(row_length)
        rows_free[row] -= lengths[item]
        row_of[item] = row
    return row_of


def pack(mask: Tensor, row_length: int) -> PackedBatch:
    """Plan the packing of a padded batch whose real entries are ``mask`` [B, S_pad] (True = real).

    Real entries keep their order; a row holds its examples in batch order. An example's position ids
    count its real entries, as the unpacked decoder counts them (``vlalign.models.decoder._positions``).
    """
    mask = mask.bool()
    batch, padded = mask.shape
    lengths = mask.sum(1).tolist()
    row_of = first_fit_decreasing(lengths, row_length)
    num_rows = max(row_of) + 1 if row_of else 0
    start = [0] * batch  # first column of each example in its row
    filled = [0] * num_rows
    for b in range(batch):
        start[b] = filled[row_of[b]]
        filled[row_of[b]] += lengths[b]
    within = mask.long().cumsum(1) - 1  # [B, S_pad] index of each real entry among its example's real entries
    flat_start = torch.tensor(row_of, device=mask.device) * row_length + torch.tensor(start, device=mask.device)
    index = torch.where(mask, flat_start[:, None] + within, torch.full_like(within, -1))  # [B, S_pad]
    positions = torch.zeros(num_rows * row_length, dtype=torch.long, device=mask.device)
    segments = torch.full((num_rows * row_length,), -1, dtype=torch.long, device=mask.device)
    positions[index[mask]] = within[mask]
    segments[index[mask]] = torch.arange(batch, device=mask.device)[:, None].expand(batch, padded)[mask]
    return PackedBatch(index, positions.view(num_rows, row_length), segments.view(num_rows, row_length),
                       num_rows, row_length, batch * padded, int(mask.sum()))


def to_rows(values: Tensor, packed: PackedBatch) -> Tensor:
    """[B, S_pad, ...] padded -> [R, S, ...] packed (padding entries of the rows are zeros)."""
    real = packed.index >= 0
    rows = values.new_zeros(packed.num_rows * packed.row_length, *values.shape[2:])
    rows = rows.index_put((packed.index[real],), values[real])
    return rows.view(packed.num_rows, packed.row_length, *values.shape[2:])


def from_rows(rows: Tensor, packed: PackedBatch) -> Tensor:
    """[R, S, ...] packed -> [B, S_pad, ...] padded (padding entries are zeros)."""
    real = packed.index >= 0
    flat = rows.reshape(packed.num_rows * packed.row_length, *rows.shape[2:])
    out = rows.new_zeros(*packed.index.shape, *rows.shape[2:])
    return out.index_put((real,), flat[packed.index[real]])


def block_causal_mask(segments: Tensor) -> Tensor:
    """segments [R, S] -> bool [R, 1, S, S]: query t sees key s iff both are in one example and s <= t.

    Padding (segment -1) sees only itself, so no row of the mask is empty (SDPA returns NaN for one)."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()  # [S, S]
    same = segments[:, :, None] == segments[:, None, :]  # [R, S, S]
    allowed = same & causal & (segments[:, None, :] >= 0)
    allowed |= torch.eye(length, dtype=torch.bool, device=segments.device)
    return allowed[:, None]
