"""A controllable mixture of text-only and image-text batches for the generative stage.

DeepSeek-VL (Lu et al. 2024, §3.2 and §3.5, METHODS.md catalogue #21) keeps training the language
model on text alone while it learns images (a text:multimodal ratio, 7:3 in their joint stage),
because multimodal training alone erodes its language ability; the stability gap in continual
pre-training (catalogue #40) is the same dip and recovery. Here every step is one whole batch, either
text-only (from ``data.text_mixture``) or image-text (``data.train``): a batch with and without
images could not share one decoder layout without a per-row prefix. ``data.text_ratio`` = r makes
step s (0-based) text-only exactly when floor((s+1)·r) > floor(s·r), so the first N steps hold
floor(N·r) text batches, evenly spread (no long runs of one kind).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from vlalign.data.loader import Loader, SkipCounter


def text_only_at(index: int, ratio: float) -> bool:
    """Whether batch ``index`` (0-based) of a mixture with text share ``ratio`` is text-only."""
    return math.floor((index + 1) * ratio) > math.floor(index * ratio)


class MixtureLoader:
    """Image-text batches from ``image_loader`` and text-only ones from ``text_loader`` in share ``ratio``;
    resumes at the same point of both (its state holds both loaders' states and the batch count)."""

    def __init__(self, image_loader: Loader, text_loader: Loader, ratio: float):
        if not 0 <= ratio < 1:
            raise ValueError(f"text ratio {ratio} must be in [0, 1): the image-text data needs some steps")
        self.image_loader, self.text_loader, self.ratio = image_loader, text_loader, ratio
        self.drawn = 0  # batches yielded so far
        self.text_drawn = 0

    @property
    def epoch(self) -> int:
        return self.image_loader.epoch

    @property
    def skips(self) -> SkipCounter:
        """Both loaders' corrupt samples together (each loader also checks its own limit)."""
        return SkipCounter(seen=self.image_loader.skips.seen + self.text_loader.skips.seen,
                           skipped=self.image_loader.skips.skipped + self.text_loader.skips.skipped)

    @property
    def text_fraction(self) -> float:
        """Share of the batches drawn so far that were text-only."""
        return self.text_drawn / max(self.drawn, 1)

    def __iter__(self) -> Iterator[dict]:
        images, texts = iter(self.image_loader), iter(self.text_loader)
        while True:
            text_only = text_only_at(self.drawn, self.ratio)
            batch = next(texts) if text_only else next(images)
            self.drawn += 1
            self.text_drawn += text_only
            yield batch

    def state_dict(self) -> dict:
        return {"image": self.image_loader.state_dict(), "text": self.text_loader.state_dict(),
                "drawn": self.drawn, "text_drawn": self.text_drawn}

    def load_state_dict(self, state: dict) -> None:
        self.image_loader.load_state_dict(state["image"])
        self.text_loader.load_state_dict(state["text"])
        self.drawn, self.text_drawn = state["drawn"], state["text_drawn"]
