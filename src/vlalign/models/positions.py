"""Learned 2-D position embeddings at another resolution: the trained grid resampled bicubically.

A ViT trained at one image size reads any other multiple of its patch size this way (ViT, Dosovitskiy
et al. 2021 §3.2, "2D interpolation of the pre-trained position embeddings"; DINO's
``interpolate_pos_encoding``). MindVL's test-time resolution search and Open-Qwen2VL's low-to-high
resolution curriculum both rely on it (``vlalign.eval.resolution``, ``vlalign.train.curriculum``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resample_positions(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """pos [1, N, D] for a square row-major grid of N = g*g patches -> [1, grid*grid, D].

    The trained table itself when the grid is unchanged (no resampling error). Interpolation runs in
    float32 (bicubic is not implemented for every low-precision dtype) and returns ``pos``'s dtype.
    """
    trained = math.isqrt(pos.shape[1])
    if trained * trained != pos.shape[1]:
        raise ValueError(f"position table of {pos.shape[1]} entries is not a square grid")
    if grid < 1:
        raise ValueError(f"the image gives a grid of {grid} patches per side; it must be at least 1")
    if grid == trained:
        return pos
    table = pos.reshape(1, trained, trained, -1).permute(0, 3, 1, 2).float()  # [1, D, g, g]
    resized = F.interpolate(table, size=(grid, grid), mode="bicubic", align_corners=False)  # [1, D, G, G]
    return resized.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)
