"""Generated data for the data tests: image bytes (good and broken) and a shard set with known damage."""

from __future__ import annotations

import collections
import io
import json
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

HTML = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>gone</body></html>\n"
WORDS = ["red", "green", "blue", "small", "large", "circle", "square", "star", "dot", "line"]


def png_bytes(pixels: np.ndarray) -> bytes:
    """``pixels``: [H, W] or [H, W, C] uint8."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def oversized_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG whose header claims ``width`` x ``height`` (correct CRC), with one tiny data chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    data = chunk(b"IDAT", zlib.compress(b"\0" * 8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def good_pixels(i: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)  # [H, W, 3]


def caption(i: int) -> str:
    rng = np.random.default_rng(10_000 + i)
    return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 7))))


# The damage: 13 bad samples, 8 of them in shard 002 (the worst shard), none in shard 003.
CORRUPT = {
    "not-an-image": [5, 130, 131],  # HTML bytes named .jpg
    "truncated-image": [132, 133, 300],  # a JPEG cut in half
    "empty-caption": [134, 135, 400],
    "oversized-image": [136, 260],  # a PNG header claiming 100000 x 100000
    "missing-image": [137, 450],  # no image member at all
}
SHARDS, PER_SHARD = 8, 64
CUT_SAMPLE = 508  # the last tar is cut in the middle of this sample's image member


@dataclass
class ShardSet:
    dir: Path
    index: Path  # shards.json (wids) with the true sample counts
    good_keys: set[str]
    skips_with_index: collections.Counter  # reason -> count, reading through shards.json
    skips_with_pattern: collections.Counter  # reading through the brace pattern (the lost tail is invisible)
    pattern: str


def make_shard_set(root: Path) -> ShardSet:
    """512 samples in 8 shards with the damage in ``CORRUPT``, and the last tar truncated mid-member."""
    root.mkdir(parents=True, exist_ok=True)
    bad = {i: reason for reason, indices in CORRUPT.items() for i in indices}
    good_keys, shardlist = set(), []
    for shard in range(SHARDS):
        members = []
        path = root / f"{shard:03d}.tar"
        for i in range(shard * PER_SHARD, (shard + 1) * PER_SHARD):
            key = f"{i:05d}"
            reason = bad.get(i)
            text = "" if reason == "empty-caption" else caption(i)
            if reason == "not-an-image":
                members.append((f"{key}.jpg", HTML))
            elif reason == "truncated-image":
                data = jpeg_bytes(good_pixels(i, 32))
                members.append((f"{key}.jpg", data[: len(data) // 2]))
            elif reason == "oversized-image":
                members.append((f"{key}.png", oversized_png()))
            elif reason != "missing-image":
                members.append((f"{key}.png", png_bytes(good_pixels(i))))
            members.append((f"{key}.txt", text.encode()))
            members.append((f"{key}.cls", str(i % 10).encode()))
            if reason is None and i < CUT_SAMPLE:
                good_keys.add(f"{path}/{key}")
        write_tar(path, members)
        shardlist.append({"url": path.name, "nsamples": PER_SHARD})
    _cut_inside_member(root / f"{SHARDS - 1:03d}.tar", f"{CUT_SAMPLE:05d}.png")
    index = root / "shards.json"
    index.write_text(json.dumps({"__kind__": "wids-shard-index-v1", "wids_version": 1, "shardlist": shardlist}))
    counts = collections.Counter({reason: len(indices) for reason, indices in CORRUPT.items()})
    lost = SHARDS * PER_SHARD - CUT_SAMPLE
    return ShardSet(root, index, good_keys, counts + collections.Counter({"truncated-shard": lost}),
                    counts + collections.Counter({"truncated-shard": 1}), str(root / "{000..007}.tar"))


def _cut_inside_member(path: Path, member: str) -> None:
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
    data = path.read_bytes()
    path.write_bytes(data[: info.offset_data + info.size // 2])
