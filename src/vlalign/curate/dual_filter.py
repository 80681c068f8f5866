"""SurgLaVi's dual-modality filtering (Pérez et al. 2025; METHODS.md §4 row 25): a pair is kept only when its
image passes an image-side quality score AND its caption passes a text-side one. It needs no trained
model, and it sits beside the CLIP-score filter (``vlalign.curate.similarity_filter``), which scores the
*agreement* of the two sides; each side's quality is a different question (a fluent caption of an
unreadable frame agrees with nothing, yet a CLIP trained on such data may not know that).

- image side: ``log(std / (mean |neighbour difference| + 1))`` over the pixels: piecewise-smooth pictures
  score high, sensor noise (differences as large as the spread) and blank frames (no spread) low;
- text side: the mean per-word log-probability of the caption under an add-one bigram model of all
  *other* captions of the source (leave-one-out): fluent captions of the corpus score high, garbled
  transcripts low;
- each score becomes a robust z-score (median, 1.4826·MAD); a side passes when z >= -``max_z``.
[inferred: SurgLaVi's abstract names dual-modality filtering, not its scores; these are the cheapest
scores that judge one side each.]
Data spec: ``dualfilter:max_z=3:SPEC`` (the kept pairs of SPEC).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from vlalign.curate.similarity_filter import Selection
from vlalign.data.sample import CorruptSample, Source
from vlalign.errors import DataError


def image_quality(image: np.ndarray) -> float:
    """[C, H, W] -> log(spread / (mean absolute neighbour difference + 1)); -inf for a constant image."""
    x = image.astype(np.float64)
    if np.issubdtype(image.dtype, np.floating):
        x = x * 255.0  # the +1 is one 8-bit grey level
    spread = x.std()
    if spread == 0:
        return -math.inf
    roughness = 0.5 * (np.abs(np.diff(x, axis=-1)).mean() + np.abs(np.diff(x, axis=-2)).mean())
    return math.log(spread / (roughness + 1.0))


def _words(caption: str) -> list[str]:
    return ["<s>", *caption.lower().replace(",", " ").replace(".", " ").split(), "</s>"]


def text_quality(captions: list[str]) -> torch.Tensor:
    """[N] mean log p(w_t | w_{t-1}) of each caption under add-one bigrams of the other captions."""
    sentences = [_words(c) for c in captions]
    bigrams = Counter(pair for words in sentences for pair in pairwise(words))
    unigrams = Counter(word for words in sentences for word in words[:-1])
    vocab = len({w for words in sentences for w in words})
    scores = []
    for words in sentences:
        own_bigrams, own_unigrams = Counter(pairwise(words)), Counter(words[:-1])
        logp = [math.log((bigrams[pair] - own_bigrams[pair] + 1) / (unigrams[pair[0]] - own_unigrams[pair[0]] + vocab))
                for pair in pairwise(words)]
        scores.append(sum(logp) / len(logp))
    return torch.tensor(scores)


def robust_z(scores: torch.Tensor) -> torch.Tensor:
    """(s - median) / (1.4826 · MAD); -inf scores stay -inf. A zero MAD uses the mean absolute deviation."""
    finite = scores[scores.isfinite()]
    if finite.numel() == 0:
        raise DataError("No sample has a finite quality score: nothing to compare with.")
    median = finite.median()
    spread = 1.4826 * (finite - median).abs().median()
    if spread == 0:
        spread = (finite - median).abs().mean().clamp_min(1e-12)
    return (scores - median) / spread


@dataclass
class DualFilterResult:
    image_scores: torch.Tensor  # [N] image_quality; NaN where the sample could not be read
    text_scores: torch.Tensor  # [N] text_quality
    kept: torch.Tensor  # [N] bool: both sides pass
    captions: list[str]  # [N] as read ("" where unreadable)

    def dropped_by(self, max_z: float) -> dict[str, int]:
        image_fail = ~(robust_z(self.image_scores.nan_to_num(-math.inf)) >= -max_z)
        text_fail = ~(robust_z(self.text_scores) >= -max_z)
        return {"image": int(image_fail.sum()), "text": int(text_fail.sum()), "both": int((image_fail & text_fail).sum())}


def dual_filter(source: Source, max_z: float = 3.0) -> DualFilterResult:
    """Score both sides of every pair of ``source``; keep the pairs whose two robust z-scores are >= -max_z."""
    if max_z <= 0:
        raise DataError(f"max_z={max_z}: the filter keeps scores within max_z robust deviations below the median; "
                        "use a positive number such as 3.")
    image_scores, captions = torch.full((len(source),), math.nan, dtype=torch.float64), []
    for i in range(len(source)):
        try:
            sample = source[i]
        except CorruptSample:
            captions.append("")
            continue
        image_scores[i] = image_quality(sample.image)
        captions.append(sample.caption)
    text_scores = text_quality(captions)
    kept = (robust_z(image_scores.nan_to_num(-math.inf)) >= -max_z) & (robust_z(text_scores) >= -max_z)
    return DualFilterResult(image_scores, text_scores, kept, captions)


class DualFiltered(Selection):
    """The pairs of ``source`` that pass ``dual_filter`` (a source of its own; ``result`` keeps the scores)."""

    def __init__(self, source: Source, max_z: float = 3.0):
        self.result = dual_filter(source, max_z)
        super().__init__(source, self.result.kept.nonzero().squeeze(1).tolist())
        self.name = f"dualfilter:max_z={max_z:g}:{source.name}"
        if hasattr(source, "cfg"):  # the shapes world's settings (its compositional holdout) for the eval tasks
            self.cfg = source.cfg

    def captions(self) -> list[str]:
        return [self.result.captions[i] for i in self.indices]
