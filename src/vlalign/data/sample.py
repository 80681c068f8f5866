"""The one sample type every data source yields, and the error a source raises for a bad sample.

Every source in vlalign is *map-style*: it has a length and returns sample ``i`` on demand. That
is what makes the data order a pure function of (seed, epoch, rank, position) and lets a resumed
run continue with the very next sample (see ``loader.py``). Shard formats are indexed once at
start-up so that they can be read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class Sample:
    """One image-text pair.

    ``image`` is channel-first ``[C, H, W]``; uint8 for 8-bit pictures, any other dtype (uint16
    satellite bands, float microscopy) as stored. ``channel_names`` names the C channels.
    """

    key: str  # unique, human-readable: a file path or "shard.tar/member-key"
    image: np.ndarray  # [C, H, W]
    caption: str
    label: int | None = None  # index into the source's ``classes`` when the source has classes
    channel_names: tuple[str, ...] = ("red", "green", "blue")
    meta: dict[str, Any] = field(default_factory=dict)


class CorruptSample(Exception):
    """A sample that cannot be used. The loader skips it, counts it by ``reason`` and logs ``source``."""

    def __init__(self, reason: str, source: str, detail: str = ""):
        self.reason = reason  # short category: "undecodable-image", "empty-caption", "missing-member", ...
        self.source = source  # the file or "shard.tar/key" it came from
        self.detail = detail
        super().__init__(f"{reason}: {source}" + (f" ({detail})" if detail else ""))


def container_of(source: str) -> str:
    """The shard or file of a sample key: ``d/003.tar/k`` -> ``d/003.tar``; ``pairs.csv#17`` -> ``pairs.csv``."""
    if ".tar/" in source:
        return source[: source.index(".tar/") + len(".tar")]
    return source.split("#")[0]


@runtime_checkable
class Source(Protocol):
    """A map-style collection of samples. ``__getitem__`` may raise ``CorruptSample``."""

    name: str  # the spec it was built from, for messages
    classes: list[str] | None  # class names when samples carry labels
    channel_names: tuple[str, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


class DerivedSource:
    """Base of a source that rewrites another ``source`` sample by sample: the same length, and the same
    class names and channels unless the subclass sets its own. The subclass sets ``name`` and ``__getitem__``."""

    def __init__(self, source: Source):
        self.source = source
        self.classes, self.channel_names = source.classes, source.channel_names

    def __len__(self) -> int:
        return len(self.source)
