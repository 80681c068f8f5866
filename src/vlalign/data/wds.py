"""WebDataset shards read map-style: every tar is indexed once at start-up and members are read by offset.

A sample is the group of members sharing a key, as WebDataset groups them: for ``dir/0001.seg.png``
the key is ``dir/0001`` (the path up to the first dot of the base name) and the extension
``seg.png`` (the rest, lower-cased). Roles by extension:

- pixels: the first present of ``npy npz tif tiff png jpg jpeg webp`` (arrays first: they carry
  every channel), or the order given by the ``image=`` option, e.g. ``image=jpg+png``;
- caption: ``txt``, else the ``caption`` field of ``json``;
- label: ``cls`` or ``label`` (an integer), else the ``label`` field of ``json``;
- channel names: the ``channel_names`` list of ``json``; the rest of ``json`` becomes ``Sample.meta``.

The shard list is a brace pattern (``dir/{000..099}.tar``, globs allowed) or a wids shard index
(``shards.json``: ``{"__kind__": "wids-shard-index-v1", "shardlist": [{"url", "nsamples"}]}``, as
``vlalign data convert`` writes it). A truncated tar keeps its readable members; the sample cut in
the middle and, when the index gives the shard's sample count, every sample after it become
``truncated-shard`` skips, so the loss is counted rather than silent.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from braceexpand import UnbalancedBracesError, braceexpand

from vlalign.data.pairs import COMMON_OPTIONS, PairSource, RawPair, boolean_option, split_argument
from vlalign.data.sample import CorruptSample
from vlalign.data.specs import parse_kv
from vlalign.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("npy", "npz", "tif", "tiff", "png", "jpg", "jpeg", "webp")
LABEL_EXTENSIONS = ("cls", "label")
WIDS_KIND = "wids-shard-index-v1"
_END_OF_ARCHIVE = 1024  # two zero blocks close a tar
# WebDataset's rule: key = path up to the first dot of the base name, extension = the rest.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass(frozen=True, slots=True)
class Entry:
    """One sample of a shard: its members' (extension, data offset, size), or why it is unusable."""

    shard: int
    key: str
    members: tuple[tuple[str, int, int], ...]
    problem: str | None = None  # a CorruptSample reason found while indexing


@dataclass
class ShardIndex:
    entries: list[Entry]
    damage: str | None  # what is wrong with the tar's end, None when it is intact


def index_tar(path: str, shard: int) -> ShardIndex:
    """Group the readable members of one uncompressed tar by key; note a truncated or garbled end."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except tarfile.ReadError as err:
            return ShardIndex([], f"not a readable tar file: {err}")
        with tar:
            groups, problems, damage = _scan_members(tar, size)
            end = tar.offset  # just past the last member read
    if damage is None and size - end < _END_OF_ARCHIVE:
        damage = f"no end-of-archive marker after byte {end}: the file was cut short"
    elif damage is None and _has_data(path, end, size):
        damage = f"unreadable bytes after byte {end}"
    entries = [Entry(shard, key, tuple(members), problems.get(key)) for key, members in groups.items()]
    return ShardIndex(entries, damage)


def _scan_members(tar: tarfile.TarFile, size: int) -> tuple[dict, dict, str | None]:
    """key -> [(extension, offset, size)], key -> problem, and the damage that stopped the scan (or None)."""
    groups: dict[str, list[tuple[str, int, int]]] = {}
    problems: dict[str, str] = {}
    while True:
        try:
            info = tar.next()
        except tarfile.ReadError as err:
            return groups, problems, f"unreadable after byte {tar.offset}: {err}"
        if info is None:
            return groups, problems, None
        match = _KEY_EXT.match(info.name)
        if not info.isfile() or match is None or _is_meta(info.name):
            continue
        key, ext = match.group(1), match.group(2).lower()
        members = groups.setdefault(key, [])
        if info.offset_data + info.size > size:
            problems[key] = "truncated-shard"
            end = info.offset_data + info.size
            return groups, problems, f"member {info.name} ends at byte {end}, the file at {size}"
        if any(e == ext for e, _, _ in members):
            problems[key] = "duplicate-member"
        members.append((ext, info.offset_data, info.size))


def _is_meta(name: str) -> bool:
    """WebDataset skips ``__name__`` members (shard-level metadata)."""
    return re.match(r"__[^/]*__($|/)", name) is not None


def _has_data(path: str, start: int, stop: int) -> bool:
    with open(path, "rb") as f:
        f.seek(start)
        return any(f.read(min(1 << 20, stop - start)).strip(b"\0"))


class WebDatasetSource(PairSource):
    """Samples of a list of tar shards, indexed at start-up, read by offset."""

    def __init__(self, name: str, shards: list[str], expected: list[int | None], *,
                 image_extensions: tuple[str, ...] = IMAGE_EXTENSIONS, classes: list[str] | None = None,
                 channels: tuple[str, ...] | None = None, layout: str = "auto", stats: dict | None = None):
        super().__init__(name, classes, channels, layout)
        self.shards, self.image_extensions = shards, image_extensions
        self.damaged: dict[str, str] = {}  # shard -> what is wrong with it
        self.missing_shards: list[str] = []  # skipped under allow_missing_shards
        self.entries: list[Entry] = []
        self._stats = stats
        for shard, (path, nsamples) in enumerate(zip(shards, expected)):
            index = index_tar(path, shard)
            self.entries += index.entries
            lost = 0 if nsamples is None else nsamples - len(index.entries)
            if lost < 0:
                log.warning("%s holds %d samples, its index says %d: the index is stale", path,
                            len(index.entries), nsamples)
            self.entries += [Entry(shard, f"lost-tail-{j}", (), "truncated-shard") for j in range(max(lost, 0))]
            if index.damage or lost > 0:
                what = index.damage or f"{len(index.entries)} samples where its index says {nsamples}"
                count = f"{lost} samples after it are lost" if nsamples is not None else \
                    "samples after it are lost (how many is unknown without a shard index)"
                self.damaged[path] = f"{what}; {count}"
                log.warning("damaged shard %s: %s", path, self.damaged[path])
        self.probe()

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, index: int) -> RawPair:
        entry = self.entries[index]
        key = f"{self.shards[entry.shard]}/{entry.key}"
        if entry.problem:
            raise CorruptSample(entry.problem, key, self.damaged.get(self.shards[entry.shard], ""))
        members = self._read_members(entry)
        meta = _metadata(members, key)
        image = next((members[e] for e in self.image_extensions if e in members), None)
        caption = _caption(members, meta)
        names = meta.pop("channel_names", None)
        return RawPair(key, image, caption, _label(members, meta, key), tuple(names) if names else None, meta)

    def captions(self) -> list[str]:
        """Reads only the caption members (``txt``, ``json``), not the pixels."""
        out = []
        for entry in self.entries:
            if entry.problem:
                continue
            members = self._read_members(entry, ("txt", "json"))
            try:
                caption = _caption(members, _metadata(members, entry.key))
            except CorruptSample:
                continue
            if caption and caption.strip():
                out.append(caption)
        return out

    def data_files(self) -> list[str]:
        return list(self.shards)

    def _read_members(self, entry: Entry, only: tuple[str, ...] | None = None) -> dict[str, bytes]:
        """One read spanning the sample's members (``only`` these extensions); a sample's members are adjacent."""
        wanted = [m for m in entry.members if only is None or m[0] in only]
        if not wanted:
            return {}
        start = min(offset for _, offset, _ in wanted)
        stop = max(offset + size for _, offset, size in wanted)
        with open(self.shards[entry.shard], "rb") as f:
            f.seek(start)
            span = f.read(stop - start)
        return {ext: span[offset - start: offset - start + size] for ext, offset, size in wanted}

    @functools.cached_property
    def normalization(self) -> tuple[list[float], list[float]] | None:
        """The shard index's statistics (all samples, from ``convert``) when it has them, else an estimate."""
        if self._stats and self.dtype != "uint8":
            return self._stats["mean"], [s if s > 0 else 1.0 for s in self._stats["std"]]
        return super().normalization


def _metadata(members: dict[str, bytes], key: str) -> dict:
    if "json" not in members:
        return {}
    try:
        meta = json.loads(members["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptSample("bad-metadata", key, f"json member: {err}") from None
    if not isinstance(meta, dict):
        raise CorruptSample("bad-metadata", key, "the json member is not a JSON object")
    return meta


def _caption(members: dict[str, bytes], meta: dict) -> str | None:
    if "txt" in members:
        return members["txt"].decode("utf-8", errors="replace")
    caption = meta.pop("caption", None)
    return None if caption is None else str(caption)


def _label(members: dict[str, bytes], meta: dict, key: str) -> int | None:
    text = next((members[e] for e in LABEL_EXTENSIONS if e in members), None)
    value = text.decode("utf-8", errors="replace").strip() if text is not None else meta.pop("label", None)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CorruptSample("bad-label", key, f"label {value!r} is not an integer") from None


# ---------------------------------------------------------------- the spec: wds:PATTERN|INDEX.json[,options]

OPTIONS = {"allow_missing_shards": boolean_option, "image": str, **COMMON_OPTIONS}


def open_wds(argument: str) -> WebDatasetSource:
    spec = f"wds:{argument}"
    pattern, rest = split_argument(argument)
    options = parse_kv(rest, OPTIONS, spec)
    if not pattern:
        raise DataError(f"Data spec '{spec}' names no shards. Write wds:DIR/{{000..099}}.tar or wds:DIR/shards.json.")
    if pattern.endswith((".tar.gz", ".tgz")):
        raise DataError(f"Data spec '{spec}': compressed shards cannot be read by offset; "
                        "decompress them (gunzip) or rewrite them with `vlalign data convert`.")
    extensions = tuple(e.strip().lower() for e in options.pop("image", "+".join(IMAGE_EXTENSIONS)).split("+"))
    allow_missing = options.pop("allow_missing_shards", False)
    if pattern.endswith(".json"):
        paths, expected, extra = _read_wids_index(pattern, spec)
    else:
        try:
            parts = list(braceexpand(pattern))
        except UnbalancedBracesError:
            raise DataError(f"Data spec '{spec}': unbalanced braces in '{pattern}'; write ranges like "
                            "shards/{000..099}.tar.") from None
        paths = [p for part in parts for p in (sorted(glob.glob(part)) if _is_glob(part) else [part])]
        expected, extra = [None] * len(paths), {}
    present = [os.path.isfile(p) for p in paths]
    if not any(present):
        raise DataError(f"Data spec '{spec}': the pattern '{pattern}' matches no file. Check the path "
                        "(relative paths start from the current directory) and the brace range.")
    missing = [p for p, ok in zip(paths, present) if not ok]
    if missing and not allow_missing:
        raise DataError(f"Data spec '{spec}': {len(missing)} of {len(paths)} shards are missing, e.g. "
                        f"{', '.join(missing[:3])}. Restore them, or add ',allow_missing_shards=true' to train "
                        "on the others.")
    for path in missing:
        log.warning("missing shard %s skipped (allow_missing_shards)", path)
    kept = [(p, n) for p, n, ok in zip(paths, expected, present) if ok]
    source = WebDatasetSource(spec, [p for p, _ in kept], [n for _, n in kept], image_extensions=extensions,
                              classes=extra.get("classes"), stats=extra.get("channel_stats"), **options)
    source.missing_shards = missing
    return source


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _read_wids_index(path: str, spec: str) -> tuple[list[str], list[int | None], dict]:
    try:
        index = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"Data spec '{spec}': the shard index {path} does not exist.") from None
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"Data spec '{spec}': cannot read the shard index {path}: {err}") from None
    if not isinstance(index, dict) or index.get("__kind__") != WIDS_KIND or \
            not isinstance(index.get("shardlist"), list):
        raise DataError(f"Data spec '{spec}': {path} is not a wids shard index ({{'__kind__': '{WIDS_KIND}', "
                        "'shardlist': [...]}).")
    base = Path(path).parent
    paths, expected = [], []
    for shard in index["shardlist"]:
        url = shard["url"]
        paths.append(url if os.path.isabs(url) else str(base / url))
        expected.append(int(shard["nsamples"]) if "nsamples" in shard else None)
    return paths, expected, index.get("vlalign", {})
