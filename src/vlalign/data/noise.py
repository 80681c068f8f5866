"""Noisy image-text pairs with a known ground truth: a source whose captions are swapped for a chosen
fraction of its samples, to measure how well a data filter finds them (Open-Qwen2VL-style filtering,
``vlalign.curate.similarity_filter``)."""

from __future__ import annotations

import dataclasses

import numpy as np

from vlalign.data.sample import DerivedSource, Sample, Source
from vlalign.errors import DataError


class ShuffledCaptions(DerivedSource):
    """``source`` in which ``round(fraction * len(source))`` samples, chosen by ``seed``, carry the caption of
    another chosen sample (a cyclic shift over a random order, so none keeps its own). ``noisy`` lists them."""

    def __init__(self, source: Source, fraction: float, seed: int = 0):
        if not 0 <= fraction <= 1:
            raise DataError(f"The fraction of noisy pairs must be in [0, 1], got {fraction}.")
        super().__init__(source)
        self.name = f"{source.name}[captions of {fraction:g} shuffled, seed {seed}]"
        chosen = np.random.default_rng(seed).permutation(len(source))[: round(fraction * len(source))].tolist()
        if len(chosen) == 1:
            raise DataError(f"{fraction:g} of {len(source)} samples is one sample: it has no other caption to take.")
        self.donor = {i: chosen[(k + 1) % len(chosen)] for k, i in enumerate(chosen)}  # sample -> caption owner
        self.noisy = sorted(self.donor)
        self._captions: list[str] | None = None

    def original_captions(self) -> list[str]:
        if self._captions is None:
            captions = getattr(self.source, "captions", None)
            self._captions = list(captions()) if captions else [self.source[i].caption for i in range(len(self))]
        return self._captions

    def captions(self) -> list[str]:
        original = self.original_captions()
        return [original[self.donor.get(i, i)] for i in range(len(self))]

    def __getitem__(self, index: int) -> Sample:
        sample = self.source[index]
        if index in self.donor:
            sample = dataclasses.replace(sample, caption=self.original_captions()[self.donor[index]])
        return sample
