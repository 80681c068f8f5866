"""Read pictures into the ``[C, H, W]`` uint8 layout every source yields: files (PNG, JPEG, ...), PIL images
and arrays in either channel order (``image_array``, what ``Aligner.encode_image`` accepts)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vlalign.errors import DataError

PIL_MODES = {1: "L", 3: "RGB"}


def read_image(path: str | Path, channels: int = 3) -> np.ndarray:
    """The image at ``path`` converted to ``channels`` (1 = grey, 3 = RGB) -> [C, H, W] uint8."""
    try:
        with Image.open(path) as image:
            return pil_array(image, channels, str(path))
    except FileNotFoundError:
        raise DataError(f"Image file {path} does not exist.") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path} is not a readable image (PNG or JPEG expected): {err}") from None


def pil_array(image: Image.Image, channels: int = 3, what: str = "a PIL image") -> np.ndarray:
    """A PIL image converted to ``channels`` (1 = grey, 3 = RGB) -> [C, H, W] uint8."""
    if channels not in PIL_MODES:
        raise DataError(f"Reading {what}: picture files give 1 (grey) or 3 (RGB) channels, but the model "
                        f"takes {channels}; use a data source for multi-channel images.")
    pixels = np.asarray(image.convert(PIL_MODES[channels]), dtype=np.uint8)  # [H, W] or [H, W, C]
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def is_single_image(images) -> bool:
    """True for one image (a path, a PIL image, an array of at most 3 axes), False for a list or batch of them."""
    return isinstance(images, (str, os.PathLike, Image.Image)) or (
        isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim <= 3)


def image_array(image, channels: int, eight_bit: bool = True) -> np.ndarray:
    """One image in any common form -> the ``[C, H, W]`` array ``ImageTransform`` takes.

    ``image``: a file path or a PIL image (converted to ``channels``: 1 grey, 3 RGB); or an array or tensor
    ``[C, H, W]``, ``[H, W, C]`` or ``[H, W]`` (grey). A 3-axis array is channels-last when its last axis
    has 1, 3 or ``channels`` entries and its first does not. A float array of a model trained on 8-bit
    pictures (``eight_bit``) holds values in [0, 1], as matplotlib and torchvision give them; otherwise an
    array is in the stored units of the model's training data. A video clip ``[T, C, H, W]`` passes as is.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, channels)
    if isinstance(image, Image.Image):
        return pil_array(image, channels)
    array = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    if eight_bit and np.issubdtype(array.dtype, np.floating):
        array = np.rint(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3 and is_channels_last(array.shape, channels):
        return array.transpose(2, 0, 1)
    return array


def is_channels_last(shape: tuple[int, ...], channels: int) -> bool:
    """Whether an image of ``shape`` (3 axes) is ``[H, W, C]`` for a model taking ``channels``."""
    counts = {1, 3, channels}
    return shape[-1] in counts and shape[0] not in counts
