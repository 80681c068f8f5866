"""Running per-channel pixel statistics, used by ``inspect``, ``convert`` and source normalisation."""

from __future__ import annotations

import numpy as np


class ChannelStats:
    """Mean and standard deviation of every channel over all pixels added, in stored units."""

    def __init__(self, num_channels: int):
        self.count = 0
        # float64 sums: 1e9 uint16 pixels square to ~4e18, far inside float64's exact-enough range here.
        self.total = np.zeros(num_channels, dtype=np.float64)
        self.total_sq = np.zeros(num_channels, dtype=np.float64)

    def add(self, image: np.ndarray) -> None:
        """``image``: ``[C, H, W]`` with this accumulator's C."""
        flat = image.reshape(image.shape[0], -1).astype(np.float64)  # [C, H*W]
        self.count += flat.shape[1]
        self.total += flat.sum(axis=1)
        self.total_sq += np.square(flat).sum(axis=1)

    @property
    def mean(self) -> list[float]:
        return (self.total / max(self.count, 1)).tolist()

    @property
    def std(self) -> list[float]:
        mean = self.total / max(self.count, 1)
        return np.sqrt(np.maximum(self.total_sq / max(self.count, 1) - mean**2, 0.0)).tolist()

    def normalization(self) -> tuple[list[float], list[float]]:
        """(mean, std) for ``ImageTransform``; a constant channel gets std 1 so it maps to 0, not NaN."""
        return self.mean, [s if s > 0 else 1.0 for s in self.std]
