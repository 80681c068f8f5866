"""What the file-backed sources (wds, csv, folder, hf) share: from a raw record to a checked ``Sample``.

A subclass indexes its files at start-up and implements ``read(i) -> RawPair`` (encoded bytes or an
array, caption, label, channel names from metadata). This base checks the caption, decodes the
pixels and brings every sample to the source's channel set, so all samples of a source stack into
one batch. The source's channel set is the ``channels=`` option, or else the channels of its
first readable sample. A sample is conformed to it like this:

- same channel names: as is;
- channels nothing named (a bare array) and the same count: they take the source's names;
- a grey picture in an RGB source: the grey plane repeated (a greyscale JPEG among colour ones);
- a superset of the source's names: those channels picked by name (RGBA -> RGB; 13 bands -> 3);
- anything else: ``CorruptSample("channel-mismatch")``.

Likewise every sample must have the dtype of the first readable one (a 16-bit PNG among 8-bit
ones is a ``dtype-mismatch`` skip, not silently rescaled).
"""

from __future__ import annotations

import abc
import functools
import logging
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlalign.data.decode import LAYOUTS, RGB, decode, default_channel_names, from_array
from vlalign.data.sample import CorruptSample, Sample
from vlalign.data.stats import ChannelStats
from vlalign.errors import DataError

log = logging.getLogger(__name__)

PROBE_SAMPLES = 32  # start-up looks this far for a readable sample to learn the channels and dtype
NORMALIZATION_SAMPLES = 256  # evenly spaced samples that estimate the mean/std of non-8-bit sources


@dataclass
class RawPair:
    key: str  # unique and human-readable: "shard.tar/key", "pairs.csv#17", a file path
    image: bytes | np.ndarray | None  # an encoded file (any format ``decode`` knows) or decoded pixels
    caption: str | None
    label: int | None = None
    channel_names: tuple[str, ...] | None = None  # from the sample's own metadata
    meta: dict[str, Any] = field(default_factory=dict)


class PairSource(abc.ABC):
    """Base class: ``name``, ``classes``, ``channel_names``; subclasses index their files and call ``probe``."""

    def __init__(self, name: str, classes: list[str] | None, channels: tuple[str, ...] | None = None,
                 layout: str = "auto"):
        self.name, self.classes, self.layout = name, classes, layout
        self.channel_names = channels
        self.dtype: np.dtype | None = None

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def read(self, index: int) -> RawPair:
        """Record ``index`` as stored; raises ``CorruptSample`` when it cannot even be read."""

    @abc.abstractmethod
    def data_files(self) -> list[str]:
        """The files that hold the data, to notice when they change (see ``vlalign.data.cache``)."""

    def captions(self) -> list[str]:
        """Every readable caption, without decoding images (for fitting the tokenizer)."""
        out = []
        for index in range(len(self)):
            try:
                caption = self.read(index).caption
            except CorruptSample:
                continue
            if caption and caption.strip():
                out.append(caption)
        return out

    def __getitem__(self, index: int) -> Sample:
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range 0..{len(self) - 1}")
        raw, image, names = self._decode(index)
        if image.dtype != self.dtype:
            raise CorruptSample("dtype-mismatch", raw.key, f"{image.dtype} pixels; the source's are {self.dtype}")
        image, names = conform_channels(image, names, self.channel_names, raw.key)
        return Sample(key=raw.key, image=image, caption=raw.caption, label=raw.label, channel_names=names,
                      meta=raw.meta)

    def _decode(self, index: int) -> tuple[RawPair, np.ndarray, tuple[str, ...] | None]:
        """Read and decode record ``index``; the names are None when nothing named the channels."""
        raw = self.read(index)
        if raw.image is None:
            raise CorruptSample("missing-image", raw.key)
        if raw.caption is None:
            raise CorruptSample("missing-caption", raw.key)
        if not raw.caption.strip():
            raise CorruptSample("empty-caption", raw.key)
        hint = raw.channel_names or self.channel_names  # the channel count steers the array layout rule
        if isinstance(raw.image, np.ndarray):
            image, names = from_array(raw.image, raw.key, self.layout, len(hint) if hint else None), None
        else:
            decoded = decode(raw.image, raw.key, self.layout, hint)
            image, names = decoded.image, decoded.channel_names
        names = raw.channel_names or names
        if names is not None and len(names) != image.shape[0]:
            raise CorruptSample("channel-mismatch", raw.key, f"metadata names {len(names)} channels {list(names)}, "
                                f"the image has {image.shape[0]}")
        return raw, image, names

    def probe(self) -> None:
        """Learn the channel set (unless given) and the dtype from the first readable sample."""
        if len(self) == 0:
            raise DataError(f"Data source {self.name} holds no samples.")
        problems = []
        for index in range(min(len(self), PROBE_SAMPLES)):
            try:
                _, image, names = self._decode(index)
            except CorruptSample as bad:
                problems.append(str(bad))
                continue
            self.dtype = image.dtype
            if self.channel_names is None:
                self.channel_names = names or default_channel_names(image.shape[0])
            return
        raise DataError(f"Data source {self.name}: none of its first {len(problems)} samples can be read: "
                        + "; ".join(problems[:5]) + ". Check the path and the file format.")

    @functools.cached_property
    def normalization(self) -> tuple[list[float], list[float]] | None:
        """Per-channel (mean, std) for non-8-bit sources, estimated from evenly spaced samples; None for uint8."""
        if self.dtype == np.uint8:
            return None
        stats = ChannelStats(len(self.channel_names))
        for index in np.linspace(0, len(self) - 1, min(len(self), NORMALIZATION_SAMPLES)).astype(int).tolist():
            try:
                stats.add(self[index].image)
            except CorruptSample:
                continue
        return stats.normalization() if stats.count else None


def conform_channels(image: np.ndarray, names: tuple[str, ...] | None, target: tuple[str, ...], key: str
                     ) -> tuple[np.ndarray, tuple[str, ...]]:
    """Bring ``image`` ``[C, H, W]`` to the ``target`` channels by the rules in the module docstring."""
    if names == target or (names is None and image.shape[0] == len(target)):
        return image, target
    if names == ("grey",) and target == RGB:
        return np.repeat(image, 3, axis=0), target
    if names is not None and set(target) <= set(names):
        return image[[names.index(n) for n in target]], target
    have = list(names) if names else f"{image.shape[0]} unnamed"
    raise CorruptSample("channel-mismatch", key, f"channels {have}; the source reads {list(target)} "
                        "(set the source's channels= option to pick or name channels)")


# ---------------------------------------------------------------- spec options shared by the file sources


def split_argument(argument: str) -> tuple[str, str]:
    """``PATH{a,b},k=v,k=v`` -> (``PATH{a,b}``, ``k=v,k=v``): commas inside braces belong to the path."""
    depth = 0
    for i, char in enumerate(argument):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            return argument[:i].strip(), argument[i + 1:]
    return argument.strip(), ""


def _named(name: str):
    def wrap(fn):
        fn.__name__ = name  # parse_kv's message says "option 'x' expects <name>"
        return fn

    return wrap


@_named("auto, chw or hwc")
def layout_option(value: str) -> str:
    if value not in LAYOUTS:
        raise ValueError(value)
    return value


@_named("channel names joined by '+', e.g. B04+B03+B02")
def channels_option(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split("+"))
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(value)
    return names


@_named("true or false")
def boolean_option(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ValueError(value)


COMMON_OPTIONS = {"layout": layout_option, "channels": channels_option}
