"""SAIL-VL's quality-scaling curriculum (Dong et al. 2025, "Scalable Vision Language Model Training via High
Quality Data Curation"; METHODS.md §4 row 22): order the training data by a quality score and let the share
of high-quality data grow as training goes on.

``QualityCurriculum`` is a source of ``num_samples`` positions (one run's worth: steps × batch); position k,
at training progress t = k / num_samples, is drawn from the top ``top`` fraction of ``source`` by quality
with probability ``start + (end - start) · t``, else from all of ``source`` (uniformly, seeded by k). Read in
index order (``data.order=sequential``) the high-quality share grows linearly over the run. [inferred: the
abstract gives the curriculum's idea, not its schedule; a linear mixing ramp is the simplest one.]

Quality scores: ``dual`` (the lower of the two robust z-scores of ``vlalign.curate.dual_filter``, computed
here, no model) or a file with a ``score`` tensor [N] (e.g. ``filter-scores.safetensors`` of
``vlalign data filter``: CLIP scores). Data spec:
``curriculum:samples=19200,start=0,end=1,top=0.5[,score=dual|FILE][,seed=0]:SPEC``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vlalign.data.sample import Sample, Source
from vlalign.errors import DataError


def dual_quality(source: Source) -> torch.Tensor:
    """[N] min(image z, text z) of the dual-modality filter's scores: a pair is as good as its worse side."""
    from vlalign.curate.dual_filter import dual_filter, robust_z

    result = dual_filter(source)
    image = robust_z(result.image_scores.nan_to_num(-math.inf))
    return torch.minimum(image, robust_z(result.text_scores)).float()


def load_scores(path: str, expected: int) -> torch.Tensor:
    from safetensors.torch import load_file

    try:
        scores = load_file(path)["score"].float()
    except (OSError, KeyError) as err:
        raise DataError(f"Quality scores {path}: cannot read a 'score' tensor ({err}).") from None
    if scores.shape != (expected,):
        raise DataError(f"Quality scores {path} hold {tuple(scores.shape)} values for a source of {expected} samples.")
    return scores.nan_to_num(-math.inf)  # unreadable samples rank last


class QualityCurriculum:
    """``num_samples`` positions over ``source``; the chance of a top-quality draw ramps from ``start`` to ``end``."""

    def __init__(self, source: Source, scores: torch.Tensor, num_samples: int, start: float = 0.0, end: float = 1.0,
                 top: float = 0.5, seed: int = 0):
        if not (0 <= start <= 1 and 0 <= end <= 1 and 0 < top <= 1):
            raise DataError(f"Curriculum start={start}, end={end} must be in [0, 1] and top={top} in (0, 1].")
        if seed < 0:
            raise DataError(f"Curriculum seed={seed} must be >= 0.")
        if num_samples < 1 or len(scores) != len(source):
            raise DataError(f"A curriculum needs samples >= 1 (got {num_samples}) and one score per sample "
                            f"({len(scores)} scores for {len(source)} samples).")
        self.source, self.num_samples, self.start, self.end, self.seed = source, num_samples, start, end, seed
        self.name = f"curriculum:samples={num_samples},start={start:g},end={end:g},top={top:g}:{source.name}"
        self.classes, self.channel_names = source.classes, source.channel_names
        order = scores.argsort(descending=True, stable=True)
        self.high_quality = order[: max(1, round(top * len(source)))].sort().values.tolist()
        if hasattr(source, "cfg"):  # the shapes world's settings (its compositional holdout) for the eval tasks
            self.cfg = source.cfg

    def __len__(self) -> int:
        return self.num_samples

    def share(self, position: int) -> float:
        """The chance that ``position`` is a high-quality draw."""
        return self.start + (self.end - self.start) * position / self.num_samples

    def index(self, position: int) -> int:
        """The source index drawn at ``position`` (a pure function of seed and position)."""
        if not 0 <= position < self.num_samples:
            raise IndexError(f"position {position} out of range for {self.name}")
        rng = np.random.default_rng([self.seed, position])
        if rng.random() < self.share(position):
            return self.high_quality[int(rng.integers(len(self.high_quality)))]
        return int(rng.integers(len(self.source)))

    def captions(self) -> list[str]:
        """The source's captions (the tokenizer's corpus), each once."""
        captions = getattr(self.source, "captions", None)
        return list(captions()) if captions else [self.source[i].caption for i in range(len(self.source))]

    def __getitem__(self, position: int) -> Sample:
        return self.source[self.index(position)]
