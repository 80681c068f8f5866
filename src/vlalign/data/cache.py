"""An optional pre-decoded cache: every image decoded once, resized to the training size, kept as uint8.

``DecodedCache(source, cache_dir, image_size)`` wraps an 8-bit source. The first use decodes the
whole source (in ``num_workers`` processes) into ``images.npy`` ``[N, C, S, S]``, memory-mapped
afterwards, so a training step reads S*S*C bytes per sample instead of decoding a file. Corrupt
samples are remembered with their reason and raise ``CorruptSample`` again, so the skip counts
are those of the uncached source. Pixels differ from the uncached path only by the rounding of
the resized image to uint8 (at most 0.5/255 before normalisation).

The cache lives in ``cache_dir/<fingerprint>/``, where the fingerprint covers the source's spec,
length, channels, the image size and the size and modification time of its data files; it is
written to a temporary folder and renamed, so a crash never leaves a half cache behind.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vlalign.data.sample import CorruptSample, Sample, Source
from vlalign.data.transforms import resize_square
from vlalign.errors import DataError

CACHE_VERSION = 1
_CHUNK = 256  # samples per work item while building


class DecodedCache:
    """A map-style source over a cache of ``source`` at ``image_size``; builds the cache when absent."""

    def __init__(self, source: Source, cache_dir: str | Path, image_size: int, num_workers: int = 0):
        if getattr(source, "dtype", np.uint8) != np.uint8:
            raise DataError(f"The decoded cache holds 8-bit images; {source.name} has {source.dtype} pixels. "
                            "Leave data.cache_dir empty for this source.")
        self.image_size = image_size
        self.name, self.classes, self.channel_names = source.name, source.classes, source.channel_names
        self.folder = Path(cache_dir) / fingerprint(source, image_size)
        if not (self.folder / "meta.json").is_file():
            build(source, self.folder, image_size, num_workers)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.keys, self.caption_texts, self.labels = meta["keys"], meta["captions"], meta["labels"]
        self.problems = {int(i): tuple(p) for i, p in meta["problems"].items()}  # index -> (reason, key, detail)
        self.images = np.load(self.folder / "images.npy", mmap_mode="r")  # [N, C, S, S] uint8

    def __len__(self) -> int:
        return len(self.keys)

    # Workers started by spawn (macOS, Windows) reopen the memory map instead of receiving a pickled copy.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "images": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.images = np.load(self.folder / "images.npy", mmap_mode="r")

    def __getitem__(self, index: int) -> Sample:
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range 0..{len(self) - 1}")
        if index in self.problems:
            raise CorruptSample(*self.problems[index])
        return Sample(key=self.keys[index], image=np.array(self.images[index]), caption=self.caption_texts[index],
                      label=self.labels[index], channel_names=self.channel_names)

    def captions(self) -> list[str]:
        return [c for i, c in enumerate(self.caption_texts) if i not in self.problems]


def fingerprint(source: Source, image_size: int) -> str:
    files = source.data_files() if hasattr(source, "data_files") else []
    stamps = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    description = [CACHE_VERSION, source.name, len(source), list(source.channel_names), image_size, stamps]
    return hashlib.sha256(json.dumps(description).encode()).hexdigest()[:16]


class _Chunks(Dataset):
    """Item c: samples [c*_CHUNK, (c+1)*_CHUNK) resized to uint8, or the reason each one is unusable."""

    def __init__(self, source: Source, image_size: int):
        self.source, self.image_size = source, image_size

    def __len__(self) -> int:
        return (len(self.source) + _CHUNK - 1) // _CHUNK

    def __getitem__(self, chunk: int) -> list:
        out = []
        for index in range(chunk * _CHUNK, min((chunk + 1) * _CHUNK, len(self.source))):
            try:
                sample = self.source[index]
            except CorruptSample as bad:
                out.append((index, None, (bad.reason, bad.source, bad.detail)))
                continue
            if sample.image.dtype != np.uint8:
                raise DataError(f"The decoded cache holds 8-bit images; {sample.key} has {sample.image.dtype} "
                                "pixels. Leave data.cache_dir empty for this source.")
            pixels = resize_square(torch.from_numpy(sample.image).float(), self.image_size)
            pixels = pixels.round().clamp(0, 255).to(torch.uint8).numpy()  # [C, S, S]
            out.append((index, pixels, (sample.key, sample.caption, sample.label)))
        return out


def _as_is(chunk: list) -> list:
    return chunk


def build(source: Source, folder: Path, image_size: int, num_workers: int = 0) -> None:
    """Decode ``source`` into ``folder`` (written beside it under a temporary name, then renamed)."""
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    n, channels = len(source), len(source.channel_names)
    images = np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(n, channels, image_size, image_size))
    keys, captions, labels, problems = [""] * n, [""] * n, [None] * n, {}
    loader = DataLoader(_Chunks(source, image_size), batch_size=None, num_workers=num_workers,
                        collate_fn=_as_is)
    for chunk in loader:
        for index, pixels, info in chunk:
            if pixels is None:
                problems[index] = info
                keys[index] = info[1]
                continue
            if pixels.shape[0] != channels:
                detail = f"{pixels.shape[0]} channels, the source has {channels}"
                problems[index] = ("channel-mismatch", info[0], detail)
                keys[index] = info[0]
                continue
            images[index] = pixels
            keys[index], captions[index], labels[index] = info
    images.flush()
    del images
    (partial / "meta.json").write_text(json.dumps({"keys": keys, "captions": captions, "labels": labels,
                                                   "problems": problems, "image_size": image_size}))
    try:
        os.replace(partial, folder)
    except OSError:  # another process (another rank) finished the same cache first
        shutil.rmtree(partial, ignore_errors=True)
        if not (folder / "meta.json").is_file():
            raise
