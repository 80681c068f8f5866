"""Low-to-high resolution curriculum (Open-Qwen2VL, arXiv 2504.00595: pre-training at a low image
resolution, then the high one): ``data.resolution_schedule`` lists image sizes for equal consecutive
parts of training.

The loader keeps producing images at ``data.image_size``; each batch is resized to the size of its
step here, and the image tower resamples its position table to the smaller grid
(``vlalign.models.positions``). Early steps then cost (size / image_size)^4 of the attention and
(size / image_size)^2 of everything else in the image tower. Only ``images`` is resized (not extra
views such as PS3's region crops).
"""

from __future__ import annotations

import torch.nn.functional as F


def resolution_at(step: int, total_steps: int, schedule: list[int]) -> int | None:
    """The image size of 0-based step ``step`` of ``total_steps``: part ``step * K // total`` of the K sizes;
    None without a schedule."""
    if not schedule:
        return None
    return schedule[min(len(schedule) - 1, step * len(schedule) // max(total_steps, 1))]


def resize_batch(batch: dict, size: int | None) -> dict:
    """The batch with ``images`` [B, C, H, W] resized to ``size`` (anti-aliased bilinear); unchanged if
    already that size or ``size`` is None."""
    images = batch.get("images")
    if size is None or images is None or images.shape[-1] == size:
        return batch
    return batch | {"images": F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False)}
