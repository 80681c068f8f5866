"""Write any source as WebDataset shards plus a wids shard index: ``vlalign data convert SRC --to DIR``.

Sample i of the source becomes members ``{i:09d}.png`` (uint8 with at most 4 channels: lossless
and small) or ``{i:09d}.npy`` (any other dtype or channel count, channel-first), ``.txt`` (caption),
``.cls`` (label, when there is one) and ``.json`` (channel names and the source's key). Corrupt
samples are skipped and counted. ``DIR/shards.json`` lists every shard with its sample count (so a
later truncation is counted exactly) and carries the classes, channel names, dtype and per-channel
statistics; read it back with ``wds:DIR/shards.json``. Files appear atomically: a shard is written
under a temporary name and renamed, and the index is written last.
"""

from __future__ import annotations

import collections
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vlalign.data.sample import CorruptSample, Sample, Source
from vlalign.data.stats import ChannelStats
from vlalign.data.wds import WIDS_KIND
from vlalign.errors import DataError
from vlalign.progress import progress as progress_bar

INDEX_FILE = "shards.json"
_PNG_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


@dataclass
class ConvertReport:
    index: Path  # DIR/shards.json: pass wds:<index> to read the shards
    shards: list[Path]
    written: int
    skipped: collections.Counter = field(default_factory=collections.Counter)


def convert(source: Source, out: str | Path, shard_size: int = 1000, progress: bool = False) -> ConvertReport:
    """Write ``source`` to ``out/000000.tar, ...`` and ``out/shards.json``; ``out`` must hold no shards yet."""
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}.")
    out = Path(out)
    if out.exists() and (any(out.glob("*.tar")) or (out / INDEX_FILE).exists()):
        raise DataError(f"{out} already holds shards; convert into an empty or new folder.")
    out.mkdir(parents=True, exist_ok=True)
    report = ConvertReport(out / INDEX_FILE, [], 0)
    shardlist, stats, dtype = [], None, None
    pending: list[tuple[int, Sample]] = []
    for i in progress_bar(range(len(source)), desc="convert", unit="sample", disable=not progress):
        try:
            sample = source[i]
        except CorruptSample as bad:
            report.skipped[bad.reason] += 1
            continue
        if not sample.caption or not sample.caption.strip():
            report.skipped["empty-caption"] += 1
            continue
        if stats is None:
            stats, dtype, channels = ChannelStats(sample.image.shape[0]), sample.image.dtype, sample.channel_names
        if sample.image.shape[0] != len(channels) or sample.image.dtype != dtype:
            report.skipped["channel-mismatch"] += 1
            continue
        stats.add(sample.image)
        pending.append((i, sample))
        if len(pending) == shard_size:
            shardlist.append(_write_shard(out, len(shardlist), pending, report))
            pending = []
    if pending:
        shardlist.append(_write_shard(out, len(shardlist), pending, report))
    if stats is None:
        raise DataError(f"{source.name}: no sample could be read, so nothing was written. Skipped: "
                        f"{dict(report.skipped)}.")
    index = {"__kind__": WIDS_KIND, "wids_version": 1, "name": source.name, "shardlist": shardlist,
             "vlalign": {"classes": source.classes, "channel_names": list(channels), "dtype": str(dtype),
                         "channel_stats": {"mean": stats.mean, "std": stats.std},
                         "skipped": dict(report.skipped)}}
    _atomic_write(report.index, json.dumps(index, indent=1).encode())
    return report


def encode_pixels(image: np.ndarray) -> tuple[str, bytes]:
    """``[C, H, W]`` -> (extension, bytes): PNG for uint8 with 1-4 channels, else ``.npy``."""
    buffer = io.BytesIO()
    if image.dtype == np.uint8 and image.shape[0] in _PNG_MODES:
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(pixels), _PNG_MODES[image.shape[0]]).save(buffer, "PNG")
        return "png", buffer.getvalue()
    np.save(buffer, np.ascontiguousarray(image), allow_pickle=False)
    return "npy", buffer.getvalue()


def _write_shard(out: Path, number: int, samples: list[tuple[int, Sample]], report: ConvertReport) -> dict:
    path = out / f"{number:06d}.tar"
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for index, sample in samples:
            key = f"{index:09d}"
            ext, pixels = encode_pixels(sample.image)
            members = [(ext, pixels), ("txt", sample.caption.encode())]
            if sample.label is not None:
                members.append(("cls", str(sample.label).encode()))
            meta = {"channel_names": list(sample.channel_names), "source_key": sample.key}
            members.append(("json", json.dumps(meta).encode()))
            for ext, data in members:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    _fsync_and_rename(partial, path)
    report.shards.append(path)
    report.written += len(samples)
    return {"url": path.name, "nsamples": len(samples), "filesize": path.stat().st_size}


def _atomic_write(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    _fsync_and_rename(partial, path)


def _fsync_and_rename(partial: Path, path: Path) -> None:
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(partial, path)
