"""Deterministic batches from any map-style source, in one of two orders, with a state for resume.

``exact``: the samples of epoch e are a permutation drawn from (seed, e); rank r of W takes every
W-th index, and batch b is positions [b*B, (b+1)*B) of that rank's stream. A batch is thus a pure
function of (seed, epoch, rank, b): workers can build batches in any order, and the loader's state
is just (epoch, next batch), so a resumed run continues with the very next sample.

``resampled``: no epochs. Every batch is B distinct samples drawn uniformly from the whole source
(with replacement between batches, as WebDataset's ``resampled=True`` does for shards), from one
random stream per rank seeded from (seed, rank, batches drawn before the stream began). One worker
pool serves the whole run, where exact order starts its workers afresh and drains their prefetch
queue at every epoch end, and loses the workers' warm state with them (an OpenMoji worker's
rendered emoji). The price: the stream's position is not saved, so a resumed run continues with a
fresh stream seeded from (seed, rank, batches drawn), not with the batch an uninterrupted run would
have drawn next; and a sample may recur before another has been seen once.

Corrupt samples are dropped from their batch, counted by reason and reported once with their
source; augmentation randomness (when added) is seeded from the batch's own seed, so there is no
worker RNG state to save.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vlalign.data.negatives import negatives_for
from vlalign.data.paraphrases import paraphrases_for
from vlalign.data.ptp import sample_prompt
from vlalign.data.sample import CorruptSample, Source, container_of
from vlalign.data.tokenizer import TextTokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.data.views import View, merge_into
from vlalign.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class SkipCounter:
    """Corrupt-sample accounting: counts by reason and by source file, and samples seen."""

    seen: int = 0
    skipped: int = 0

    def __post_init__(self):
        self.by_reason: collections.Counter = collections.Counter()
        self.by_shard: collections.Counter = collections.Counter()
        self.reported: set[str] = set()

    def add(self, n_seen: int, skips: list[tuple[str, str, str]]) -> None:
        self.seen += n_seen
        for reason, source, detail in skips:
            self.skipped += 1
            self.by_reason[reason] += 1
            self.by_shard[container_of(source)] += 1
            if source not in self.reported:
                self.reported.add(source)
                log.warning("skipped sample %s: %s %s", source, reason, detail)

    def check(self, max_fraction: float, min_seen: int = 100) -> None:
        if self.seen >= min_seen and self.skipped > max_fraction * self.seen:
            worst, count = self.by_shard.most_common(1)[0]
            reasons = ", ".join(f"{r}: {c}" for r, c in self.by_reason.most_common())
            raise DataError(
                f"Too many corrupt samples: {self.skipped} of {self.seen} "
                f"({self.skipped / self.seen:.1%}) exceeds data.max_skip_fraction={max_fraction:g}. "
                f"Worst source: {worst} ({count} skipped). By reason: {reasons}. "
                "Fix or remove the bad files, or raise data.max_skip_fraction."
            )

    def state_dict(self) -> dict:
        return {"seen": self.seen, "skipped": self.skipped, "by_reason": dict(self.by_reason),
                "by_shard": dict(self.by_shard)}

    def load_state_dict(self, state: dict) -> None:
        self.seen, self.skipped = state["seen"], state["skipped"]
        self.by_reason = collections.Counter(state["by_reason"])
        self.by_shard = collections.Counter(state["by_shard"])


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's sample indices for ``epoch``: a seeded permutation, every ``world``-th from ``rank``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)[rank::world]


class _CollatedBatches(Dataset):
    """Map-style dataset whose item for a list of sample indices is their collated batch (runs in workers)."""

    def __init__(self, source: Source, tokenizer: TextTokenizer, context_length: int, transform: ImageTransform,
                 collate_fn: Callable[..., dict]):
        self.source, self.tokenizer, self.context_length = source, tokenizer, context_length
        self.transform, self.collate_fn = transform, collate_fn

    def __getitem__(self, indices: list[int]) -> dict:
        return self.collate_fn(self.source, indices, self.tokenizer, self.context_length, self.transform)


def resampled_stream(n: int, batch_size: int, seed: int, rank: int, start: int) -> Iterator[list[int]]:
    """Endless lists of ``batch_size`` distinct indices of ``range(n)``: one stream per (seed, rank, start).

    Distinct within a batch: a repeated pair would be its own false negative under a contrastive loss.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, rank, start])))
    while True:
        yield rng.choice(n, size=batch_size, replace=False).tolist()


def read_samples(source: Source, indices: list[int]) -> tuple[list, list[tuple[str, str, str]]]:
    """The readable samples at ``indices`` and (reason, source, detail) for each one skipped."""
    samples, skips = [], []
    for i in indices:
        try:
            sample = source[i]
            if not sample.caption or not sample.caption.strip():
                raise CorruptSample("empty-caption", sample.key)
            samples.append(sample)
        except CorruptSample as bad:
            skips.append((bad.reason, bad.source, bad.detail))
    return samples, skips


def collate(source: Source, indices: list[int], tokenizer: TextTokenizer, context_length: int,
            transform: ImageTransform, negative_kinds: tuple[str, ...] = (), negative_seed: int = 0,
            position_prompts: str = "none", with_text_types: bool = False, views: tuple[View, ...] = (),
            paraphrases: bool = False) -> dict:
    """Image-caption pairs for the dual encoder. A batch with no readable sample has no ``text_ids``.

    With ``negative_kinds`` every caption also gets a word-swap hard negative
    (``vlalign.data.negatives``): ``negative_ids``/``negative_mask`` and ``negative_valid`` [B] bool.
    ``position_prompts`` (PTP, ``vlalign.data.ptp``; drawn with ``negative_seed``): "auxiliary" adds
    ``prompt_ids``/``prompt_mask`` [B, L], "concat" appends the prompt to the caption. ``with_text_types``
    adds ``text_types`` [B] (1 for image-label samples, ``meta["text_type"] == "label"``, else 0).
    Each of ``views`` (``vlalign.data.views``) adds the entries an auxiliary objective reads.
    With ``paraphrases`` every caption also gets a positive paraphrase (``vlalign.data.paraphrases``, drawn
    with ``negative_seed``): ``paraphrase_ids``/``paraphrase_mask`` and ``paraphrase_valid`` [B] bool.
    """
    samples, skips = read_samples(source, indices)
    if not samples:
        return {"images": None, "skipped": skips, "n_seen": len(indices)}
    captions = [s.caption for s in samples]
    extra = {}
    if position_prompts != "none":
        prompts = [sample_prompt(s, negative_seed) for s in samples]
        if position_prompts == "concat":  # as the reference data: "caption. the block P has a O"
            captions = [f"{caption}. {prompt}" for caption, prompt in zip(captions, prompts)]
        else:
            prompt_ids, prompt_mask = tokenizer(prompts, context_length)
            extra |= {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}  # [B, L]
    if with_text_types:
        extra["text_types"] = torch.tensor([int(s.meta.get("text_type") == "label") for s in samples])  # [B]
    for view in views:
        merge_into(extra, view(samples, tokenizer, context_length, transform))
    ids, mask = tokenizer(captions, context_length)
    images = transform([s.image for s in samples])  # [B, C, H, W]
    # Ids of the channels the model sees (after the transform, which may expand greyscale to RGB).
    channel_ids = torch.arange(images.shape[-3]).expand(len(samples), -1)  # clips [B, T, C, H, W] too
    negatives = {}
    if negative_kinds:
        texts, valid = negatives_for(captions, [s.key for s in samples], negative_kinds, negative_seed)
        negative_ids, negative_mask = tokenizer(texts, context_length)
        # A swap past the context length truncates away: the "negative" would be the caption itself.
        valid = torch.tensor(valid) & (negative_ids != ids).any(dim=1)  # [B]
        negatives = {"negative_ids": negative_ids, "negative_mask": negative_mask,  # [B, L]
                     "negative_valid": valid}
    positives = {}
    if paraphrases:
        texts, valid = paraphrases_for(samples, negative_seed)
        paraphrase_ids, paraphrase_mask = tokenizer(texts, context_length)
        # A paraphrase that truncates to the caption's tokens adds nothing but a duplicate column.
        valid = torch.tensor(valid) & (paraphrase_ids != ids).any(dim=1)  # [B]
        positives = {"paraphrase_ids": paraphrase_ids, "paraphrase_mask": paraphrase_mask,  # [B, L]
                     "paraphrase_valid": valid}
    return negatives | positives | extra | {
        "images": images,  # [B, C, H, W]
        "channel_ids": channel_ids,  # [B, C] original channel indices
        "text_ids": ids,  # [B, L]
        "text_mask": mask,  # [B, L]
        "labels": torch.tensor([-1 if s.label is None else s.label for s in samples]),
        "keys": [s.key for s in samples],
        "captions": captions,
        "skipped": skips,
        "n_seen": len(indices),
    }


# "sequential": as exact, but every epoch reads the source in index order, for sources that order their samples
# themselves (the quality curriculum of vlalign.data.curriculum)
ORDERS = ("exact", "resampled", "sequential")


class Loader:
    """Endless iterator over batches with a ``state_dict``: exact resume in ``exact`` order, a fresh
    stream in ``resampled`` order (see the module docstring).

    ``collate_fn(source, indices, tokenizer, context_length, transform)`` builds one batch dict:
    ``collate`` (image-caption pairs) by default, or e.g. the generative models' examples.
    """

    def __init__(self, source: Source, tokenizer: TextTokenizer, transform: ImageTransform, batch_size: int,
                 context_length: int, seed: int = 0, rank: int = 0, world: int = 1, num_workers: int = 0,
                 max_skip_fraction: float = 0.01, collate_fn: Callable[..., dict] = collate, order: str = "exact",
                 pin_memory: bool = False):
        if len(source) // world < batch_size:
            raise DataError(
                f"Data source {source.name} has {len(source)} samples: fewer than one batch of {batch_size} "
                f"per rank ({world} ranks). Use more data or a smaller data.batch_size."
            )
        if order not in ORDERS:
            raise DataError(f"Unknown data order '{order}'; use one of: {', '.join(ORDERS)}.")
        self.source, self.tokenizer, self.transform = source, tokenizer, transform
        self.batch_size, self.context_length = batch_size, context_length
        self.seed, self.rank, self.world = seed, rank, world
        self.num_workers = num_workers
        self.max_skip_fraction = max_skip_fraction
        self.collate_fn = collate_fn
        self.order = order
        self.pin_memory = pin_memory  # page-locked batches: asynchronous host-to-GPU copies
        # In resampled order: whole epochs' worth of batches drawn, and batches drawn since.
        self.epoch, self.next_batch = 0, 0
        self.skips = SkipCounter()
        if order == "resampled" and rank == 0:
            log.warning("data.order=resampled: batches are drawn at random, with replacement between batches; a "
                        "resumed run continues with a fresh random stream seeded from (seed, batches drawn), not "
                        "with the very next sample. Use data.order=exact for an exactly resumable run.")

    @property
    def batches_per_epoch(self) -> int:
        return len(self.source) // self.world // self.batch_size

    @property
    def batches_drawn(self) -> int:
        return self.epoch * self.batches_per_epoch + self.next_batch

    def __iter__(self) -> Iterator[dict]:
        batches = self._resampled_batches() if self.order == "resampled" else self._exact_batches()
        for batch in batches:
            self.skips.add(batch["n_seen"], batch["skipped"])
            self.skips.check(self.max_skip_fraction)
            if batch.get("text_ids") is None:  # every sample of the batch was corrupt
                continue
            yield batch

    def _exact_batches(self) -> Iterator[dict]:
        while True:
            if self.order == "sequential":
                order = torch.arange(len(self.source))[self.rank :: self.world]
            else:
                order = epoch_order(len(self.source), self.seed, self.epoch, self.rank, self.world)
            batches = order[: self.batches_per_epoch * self.batch_size].view(-1, self.batch_size)  # [batches, B]
            # Its own generator: creating a DataLoader iterator draws a seed, and from the global RNG
            # that draw would differ between a resumed run and an uninterrupted one.
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 4099 + self.rank)
            for batch in self._load(batches[self.next_batch :].tolist(), generator):
                self.next_batch += 1
                yield batch
            self.epoch, self.next_batch = self.epoch + 1, 0

    def _resampled_batches(self) -> Iterator[dict]:
        stream = resampled_stream(len(self.source), self.batch_size, self.seed, self.rank, self.batches_drawn)
        generator = torch.Generator().manual_seed(self.seed * 4099 + self.rank)
        for batch in self._load(stream, generator):
            self.epoch, self.next_batch = divmod(self.batches_drawn + 1, self.batches_per_epoch)
            yield batch

    def _load(self, index_lists: Iterable[list[int]], generator: torch.Generator) -> Iterator[dict]:
        """The collated batch of each index list, built by the workers and returned in order."""
        dataset = _CollatedBatches(self.source, self.tokenizer, self.context_length, self.transform, self.collate_fn)
        yield from DataLoader(dataset, batch_size=None, sampler=index_lists, num_workers=self.num_workers,
                              prefetch_factor=4 if self.num_workers else None, generator=generator,
                              pin_memory=self.pin_memory)

    def state_dict(self) -> dict:
        return {"order": self.order, "epoch": self.epoch, "next_batch": self.next_batch, "seed": self.seed,
                "skips": self.skips.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        saved_order = state.get("order", "exact")  # checkpoints from before data.order had a choice
        self.epoch, self.next_batch = state["epoch"], state["next_batch"]
        self.skips.load_state_dict(state["skips"])
        if saved_order != self.order:
            log.warning("resuming with data.order=%s from a checkpoint written with data.order=%s: the data "
                        "continues after %d batches, not with the sample the saved run would have read next.",
                        self.order, saved_order, self.batches_drawn)
        elif self.order == "resampled" and self.rank == 0:
            log.warning("resuming data.order=resampled after %d batches: a fresh random stream seeded from "
                        "(seed=%d, batches drawn=%d), not the very next sample of the saved run.",
                        self.batches_drawn, self.seed, self.batches_drawn)
