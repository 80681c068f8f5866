"""Filter image-text pairs by a trained model's image-text similarity: the CLIP-score / DFN filtering
Open-Qwen2VL curates its pre-training pairs with (Wang et al. 2025, arXiv 2504.00595; METHODS.md §4
row 11). ``vlalign data filter SRC --checkpoint RUN --drop F --to DIR``.

Every pair is scored with the cosine similarity of its image and caption embeddings under a trained
dual encoder (``vlalign.load``); the lowest-scoring fraction is dropped and the rest is written as
WebDataset shards in ``vlalign data convert``'s format, a new source ``wds:DIR/shards.json``. Next to
the shards, ``filter.json`` records the run, the fraction and the threshold, and
``filter-scores.safetensors`` every score (``score`` [N], NaN for unreadable samples) and decision
(``kept`` [N]), so a different cut can be chosen later without scoring again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlalign.data.convert import ConvertReport, convert
from vlalign.data.sample import CorruptSample, Sample, Source
from vlalign.errors import DataError
from vlalign.progress import progress as progress_bar

SCORES_FILE = "filter-scores.safetensors"
SUMMARY_FILE = "filter.json"


@dataclass
class FilterResult:
    scores: torch.Tensor  # [N] image-caption cosine similarity; NaN where the sample could not be read
    kept: torch.Tensor  # [N] bool
    threshold: float  # the lowest kept score
    shards: ConvertReport


class Selection:
    """The samples of ``source`` at ``indices``, in order (a source of its own)."""

    def __init__(self, source: Source, indices: list[int]):
        self.source, self.indices = source, indices
        self.name = f"{source.name}[{len(indices)} of {len(source)} kept]"
        self.classes, self.channel_names = source.classes, source.channel_names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        return self.source[self.indices[i]]


@torch.inference_mode()
def score_pairs(aligner, source: Source, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """[N] cosine similarity of each sample's image and caption under ``aligner`` (an ``Aligner``,
    whose embeddings are unit-norm); NaN for samples that cannot be read."""
    scores = torch.full((len(source),), math.nan)
    bar = progress_bar(total=len(source), desc="score", unit="pair", disable=not progress)
    for span, readable, images, captions in readable_batches(source, batch_size):
        if readable:
            image, text = aligner.encode_image(images), aligner.encode_text(captions)  # [b, E] each
            scores[readable] = (image * text).sum(-1).float()
        bar.update(span)
    bar.close()
    return scores


def readable_batches(source: Source, batch_size: int) -> Iterator[tuple[int, list[int], list, list[str]]]:
    """Consecutive blocks of ``batch_size`` positions: (block length, indices of the readable samples,
    their images, their captions). Unreadable samples are left out; the caller decides what they count as."""
    for start in range(0, len(source), batch_size):
        stop = min(len(source), start + batch_size)
        readable, images, captions = [], [], []
        for i in range(start, stop):
            try:
                sample = source[i]
            except CorruptSample:
                continue
            readable.append(i)
            images.append(sample.image)
            captions.append(sample.caption)
        yield stop - start, readable, images, captions


def keep_mask(scores: torch.Tensor, drop_fraction: float) -> torch.Tensor:
    """[N] bool: False for unreadable samples and for the lowest ``round(drop_fraction * readable)``
    scores (ties broken by position, so the cut is reproducible)."""
    if not 0 <= drop_fraction < 1:
        raise DataError(f"The fraction to drop must be in [0, 1), got {drop_fraction}.")
    readable = (~scores.isnan()).nonzero().squeeze(1)
    order = scores[readable].argsort(stable=True)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[readable[order[round(drop_fraction * len(readable)):]]] = True
    return keep


def filter_source(aligner, source: Source, drop_fraction: float, out: str | Path, shard_size: int = 1000,
                  batch_size: int = 256, progress: bool = False) -> FilterResult:
    """Score every pair of ``source``, drop the lowest ``drop_fraction`` and write the rest to ``out`` as
    shards (see the module docstring)."""
    scores = score_pairs(aligner, source, batch_size, progress)
    kept = keep_mask(scores, drop_fraction)
    if not kept.any():
        raise DataError(f"{source.name}: no sample is left to write (readable: {int((~scores.isnan()).sum())}).")
    shards = convert(Selection(source, kept.nonzero().squeeze(1).tolist()), out, shard_size, progress)
    threshold = scores[kept].min().item()
    out = Path(out)
    save_file({"score": scores, "kept": kept.to(torch.uint8)}, out / SCORES_FILE)
    summary = {"source": source.name, "run": str(aligner.run_dir), "step": aligner.step,
               "drop_fraction": drop_fraction, "threshold": threshold, "scored": len(scores),
               "unreadable": int(scores.isnan().sum()), "kept": int(kept.sum()), "written": shards.written}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    return FilterResult(scores, kept, threshold, shards)


def detection_quality(kept: torch.Tensor, noisy: list[int]) -> dict[str, float]:
    """How well dropping found the known-noisy samples: precision (share of the dropped that were
    noisy) and recall (share of the noisy that were dropped)."""
    dropped = set((~kept).nonzero().squeeze(1).tolist())
    hits = len(dropped & set(noisy))
    return {"dropped": len(dropped), "noisy": len(noisy), "precision": hits / len(dropped) if dropped else 0.0,
            "recall": hits / len(noisy) if noisy else 0.0}
