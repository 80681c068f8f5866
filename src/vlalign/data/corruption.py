"""Pairs broken on one side, with a known ground truth: the noise SurgLaVi's dual-modality filtering removes
(Pérez et al. 2025; METHODS.md §4 row 25): video frames that show no usable picture, and narrations that are
not readable descriptions. ``CorruptedPairs`` replaces the images of one chosen fraction of a source with
sensor noise, and the captions of another (disjoint) fraction with a garbled transcript of the caption
(its words shuffled, filler words inserted). ``noisy_images`` / ``noisy_texts`` list them.
Data spec: ``corrupt:image=0.2,text=0.2[,seed=0]:SPEC``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vlalign.data.sample import DerivedSource, Sample, Source
from vlalign.errors import DataError

FILLERS = ("um", "uh", "okay", "so", "right", "now")


def garble(caption: str, rng: np.random.Generator) -> str:
    """A transcript-like corruption: the caption's words in random order with two filler words inserted."""
    words = caption.split()
    words = [words[i] for i in rng.permutation(len(words))]
    for filler in rng.choice(FILLERS, size=2):
        words.insert(int(rng.integers(len(words) + 1)), str(filler))
    return " ".join(words)


def noise_image(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Uniform sensor noise over the dtype's range (8-bit) or [0, 1] (float)."""
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    return rng.random(shape).astype(dtype)


class CorruptedPairs(DerivedSource):
    """``source`` with ``round(image_fraction · N)`` images replaced by noise and ``round(text_fraction · N)``
    other samples' captions garbled; the choice and the corruption depend on ``seed`` and the index only."""

    def __init__(self, source: Source, image_fraction: float, text_fraction: float, seed: int = 0):
        if not (0 <= image_fraction <= 1 and 0 <= text_fraction <= 1 and image_fraction + text_fraction <= 1):
            raise DataError(f"Corruption fractions image={image_fraction}, text={text_fraction} must each be in "
                            "[0, 1] and sum to at most 1 (a pair is broken on one side only).")
        if seed < 0:
            raise DataError(f"Corruption seed={seed} must be >= 0.")
        super().__init__(source)
        self.seed = seed
        self.name = f"corrupt:image={image_fraction:g},text={text_fraction:g},seed={seed}:{source.name}"
        order = np.random.default_rng([seed, 0]).permutation(len(source))
        n_image, n_text = round(image_fraction * len(source)), round(text_fraction * len(source))
        self.noisy_images = sorted(order[:n_image].tolist())
        self.noisy_texts = sorted(order[n_image:n_image + n_text].tolist())
        self._image_set, self._text_set = set(self.noisy_images), set(self.noisy_texts)
        if hasattr(source, "cfg"):  # the shapes world's settings (its compositional holdout) for the eval tasks
            self.cfg = source.cfg

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 1, index])

    def _caption(self, index: int, caption: str) -> str:
        return garble(caption, self._rng(index)) if index in self._text_set else caption

    def captions(self) -> list[str]:
        captions = getattr(self.source, "captions", None)
        original = list(captions()) if captions else [self.source[i].caption for i in range(len(self))]
        return [self._caption(i, c) for i, c in enumerate(original)]

    def __getitem__(self, index: int) -> Sample:
        sample = self.source[index]
        if index in self._image_set:
            image = noise_image(sample.image.shape, sample.image.dtype, self._rng(index))
            return dataclasses.replace(sample, image=image, meta=sample.meta | {"corrupted": "image"})
        if index in self._text_set:
            return dataclasses.replace(sample, caption=self._caption(index, sample.caption),
                                       meta=sample.meta | {"corrupted": "text"})
        return sample
