"""Read one picture file (PNG, JPEG, ...) into the ``[C, H, W]`` uint8 layout every source yields."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlalign.errors import DataError

PIL_MODES = {1: "L", 3: "RGB"}


def read_image(path: str | Path, channels: int = 3) -> np.ndarray:
    """The image at ``path`` converted to ``channels`` (1 = grey, 3 = RGB) -> [C, H, W] uint8."""
    if channels not in PIL_MODES:
        raise DataError(f"Reading {path}: picture files give 1 (grey) or 3 (RGB) channels, but the model "
                        f"takes {channels}; use a data source for multi-channel images.")
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert(PIL_MODES[channels]), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"Image file {path} does not exist.") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path} is not a readable image (PNG or JPEG expected): {err}") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
