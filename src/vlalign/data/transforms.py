"""From stored pixels to model input: resize, channel adaptation, per-channel normalisation.

Works for any channel count and dtype: 8-bit pictures are scaled to [0, 1] and centred with
mean=std=0.5; other dtypes (uint16 satellite bands, float microscopy) use the source's own
per-channel statistics (``source.normalization``) when it provides them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


PREPROCESS_FILE = "preprocess.json"  # saved in the run directory so inference preprocesses as training did
STATISTICS_IMAGES = 1000  # images measured by ``channel_statistics``


class ImageTransform:
    def __init__(self, image_size: int, in_channels: int, mean: list[float] | None = None,
                 std: list[float] | None = None):
        self.image_size = image_size
        self.in_channels = in_channels
        self.mean = mean
        self.std = std

    def __call__(self, images: list[np.ndarray], crop: bool = False) -> torch.Tensor:
        """list of [C, H, W] arrays -> [B, in_channels, S, S] float32; of clips [T, C, H, W] -> [B, T, ...].

        Each image is resized to S x S as training saw it (``resize_square``), or with ``crop`` keeping its
        aspect: the shorter side to S, then the centre S x S (open_clip's preprocessing)."""
        resize = resize_center_crop if crop else resize_square
        out = []
        for image in images:
            if image.ndim == 4:  # a video clip: every frame as an image
                out.append(self(list(image), crop))
                continue
            x = torch.from_numpy(np.ascontiguousarray(image))
            if image.dtype == np.uint8 and self.mean is None:
                x = (x.float() / 255.0 - 0.5) / 0.5
            else:
                x = x.float()
                if self.mean is not None:
                    mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
                    std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
                    x = (x - mean) / std
            if x.shape[0] == 1 and self.in_channels > 1:  # greyscale into an RGB tower
                x = x.expand(self.in_channels, -1, -1)
            out.append(resize(x, self.image_size))
        return torch.stack(out)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"image_size": self.image_size, "in_channels": self.in_channels,
                                          "mean": self.mean, "std": self.std}, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "ImageTransform":
        return cls(**json.loads(Path(path).read_text()))


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[C, H, W]`` float -> ``[C, size, size]``: bilinear with antialiasing (area-like when shrinking)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[C, H, W]`` float -> ``[C, size, size]``: the shorter side resized to ``size`` (aspect kept), then the
    centre ``size`` x ``size``. A square image gives what ``resize_square`` gives."""
    height, width = x.shape[-2:]
    scale = size / min(height, width)
    new_height, new_width = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_height, new_width) != (height, width):
        x = F.interpolate(x[None], size=(new_height, new_width), mode="bilinear", align_corners=False,
                          antialias=True)[0]
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return x[:, top : top + size, left : left + size]


def channel_statistics(source, limit: int = STATISTICS_IMAGES) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) in stored units over the first ``limit`` samples of ``source``.

    For multi-channel data whose channels are mostly dark (fluorescence-like stains), standardising
    each channel, as ChannelViT does for JUMP-CP and So2Sat (Bao et al. 2023, App. A.2), is what
    lets a small ViT find the sparse signal; it also makes a zero-filled missing channel equal to
    that channel's mean rather than to mid-grey.
    """
    total, total_sq, count = None, None, 0
    for i in range(min(limit, len(source))):
        x = source[i].image.astype(np.float64)  # [C, H, W]
        s, sq = x.sum(axis=(1, 2)), (x * x).sum(axis=(1, 2))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += x.shape[1] * x.shape[2]
    if total is None:
        raise ValueError(f"cannot measure channel statistics: {source.name} is empty")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.tolist(), np.maximum(std, 1e-6).tolist()
