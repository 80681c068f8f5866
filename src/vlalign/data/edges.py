"""Edge maps as a further image modality (``edges:SPEC``), for binding a new encoder to a fixed text
space (LanguageBind: Zhu et al. 2024, "LanguageBind: Extending Video-Language Pretraining to N-modality
by Language-based Semantic Alignment", §3: each new modality gets its own encoder, trained
contrastively against a frozen language encoder).

An edge map is the Sobel gradient magnitude of the image's luminance: one channel, bright at outlines
and dark inside flat regions. It keeps shape and position, keeps brightness only as edge contrast and
drops hue, so it is a different view of the same scene, as depth or infrared are of a photograph.
``EdgeMaps`` wraps any source; sample ``i`` is the edge map of the wrapped source's sample ``i`` with
the same caption, label and scene, so the two modalities stay paired index by index.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vlalign.data.sample import DerivedSource, Sample, Source

PREFIX = "edges:"
CHANNEL_NAMES = ("edges",)
# Rec. 601 luma weights for RGB; other channel counts use the plain mean.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# The largest Sobel magnitude of an 8-bit image is 4·sqrt(2)·255 (a diagonal step of 255); dividing by 4
# keeps every axis-aligned step of 255 at full scale and clips only sharp diagonal corners.
_SCALE = 4.0


def luminance(image: np.ndarray) -> np.ndarray:
    """[C, H, W] -> [H, W] float32 in the image's units."""
    x = image.astype(np.float32)
    if x.shape[0] == 3:
        return np.tensordot(_LUMA, x, axes=1)
    return x.mean(axis=0)


def sobel_magnitude(plane: np.ndarray) -> np.ndarray:
    """[H, W] -> [H, W] gradient magnitude of the 3x3 Sobel filters, borders replicated."""
    p = np.pad(plane, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return np.hypot(gx, gy)


def edge_map(image: np.ndarray) -> np.ndarray:
    """An 8-bit image [C, H, W] -> its edge map [1, H, W] uint8."""
    if image.dtype != np.uint8:
        raise ValueError(f"edge maps are defined for 8-bit images; got dtype {image.dtype}")
    magnitude = sobel_magnitude(luminance(image)) / _SCALE
    return np.clip(np.rint(magnitude), 0, 255).astype(np.uint8)[None]


class EdgeMaps(DerivedSource):
    """Any 8-bit source seen as edge maps; everything but the pixels (caption, label, meta) is kept."""

    def __init__(self, source: Source):
        super().__init__(source)
        self.name = PREFIX + source.name
        self.channel_names = CHANNEL_NAMES

    def __getitem__(self, index: int) -> Sample:
        sample = self.source[index]
        return dataclasses.replace(sample, image=edge_map(sample.image), channel_names=CHANNEL_NAMES)

    def captions(self) -> list[str]:
        from vlalign.data.mixture import texts_of

        return texts_of(self.source)

    def __getattr__(self, name: str):  # source-specific helpers (the shapes world's scene, cfg, templates)
        if name == "source":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.source, name)


def same_modality(train_spec: str, spec: str) -> str:
    """``spec`` seen in the modality of the training data: an edge-map run evaluates on edge maps."""
    if train_spec.startswith(PREFIX) and not spec.startswith(PREFIX):
        return PREFIX + spec
    return spec
