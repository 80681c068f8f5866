"""Local Hugging Face data: a ``save_to_disk`` folder (Arrow files) or Parquet files: ``hf:PATH[,split=train]``.

Read with ``pyarrow`` alone (the optional extra ``pip install pyarrow``); the ``datasets`` package
is not needed. Arrow files are memory-mapped; Parquet is read a row group at a time (random order
over a large Parquet set decompresses a group per sample: convert it to shards for training).

Columns: the pixels are the ``Image`` feature (``{"bytes", "path"}``), else a binary column, else
an array column (``Array3D``); the caption is the first of ``caption text sentence title``; the
label is ``label`` (a ``ClassLabel`` gives the class names). ``image=``, ``caption=``, ``label=``
name other columns.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path

import numpy as np

from vlalign.data.pairs import COMMON_OPTIONS, PairSource, RawPair, split_argument
from vlalign.data.sample import CorruptSample
from vlalign.data.specs import parse_kv
from vlalign.errors import DataError

INSTALL_HINT = "pip install pyarrow"
CAPTION_COLUMNS = ("caption", "text", "sentence", "title")
OPTIONS = {"split": str, "image": str, "caption": str, "label": str, **COMMON_OPTIONS}
_ROW_GROUP_CACHE = 4


class HuggingFaceSource(PairSource):
    def __init__(self, name: str, files: list[Path], kind: str, features: dict, image: str | None = None,
                 caption: str | None = None, label: str | None = None, channels: tuple[str, ...] | None = None,
                 layout: str = "auto"):
        self.files, self.kind = files, kind
        self._pid, self._open = None, {}
        schema = self._schema()
        columns = schema.names
        self.image_column = image or _image_column(schema, features)
        self.caption_column = caption or next((c for c in CAPTION_COLUMNS if c in columns), None)
        self.label_column = label or ("label" if "label" in columns and _is_integer(schema, "label") else None)
        for role, column in (("image", self.image_column), ("caption", self.caption_column)):
            if column is None or column not in columns:
                raise DataError(f"Data spec '{name}': no {role} column{f' {column!r}' if column else ''} among "
                                f"{columns}. Name it with {role}=COLUMN.")
        label_ok = self.label_column in columns and _is_integer(schema, self.label_column)
        if self.label_column is not None and not label_ok:
            raise DataError(f"Data spec '{name}': the label column must be an integer (ClassLabel) column of "
                            f"{columns}, got {self.label_column!r}.")
        label_feature = features.get(self.label_column or "", {})
        classes = list(label_feature["names"]) if label_feature.get("_type") == "ClassLabel" else None
        super().__init__(name, classes, channels, layout)
        # (file, row group or -1 for a whole Arrow file, first row), in row order
        self.parts, self.length = self._parts()
        self.starts = [start for _, _, start in self.parts]
        self.probe()

    def __len__(self) -> int:
        return self.length

    def read(self, index: int) -> RawPair:
        part = bisect.bisect_right(self.starts, index) - 1
        table = self._table(part)
        row = index - self.starts[part]
        key = f"{self.name.split(',')[0]}#{index}"
        cell = table.column(self.image_column)[row].as_py()
        caption = table.column(self.caption_column)[row].as_py()
        label = table.column(self.label_column)[row].as_py() if self.label_column else None
        return RawPair(key, _pixels(cell, key), None if caption is None else str(caption),
                       None if label is None or label < 0 else int(label))

    def data_files(self) -> list[str]:
        return [str(f) for f in self.files]

    def captions(self) -> list[str]:
        texts = []
        for i in range(len(self.files)):
            table = self._arrow(i) if self.kind == "arrow" else self._parquet(i).read(columns=[self.caption_column])
            texts += table.column(self.caption_column).to_pylist()
        return [str(t) for t in texts if t is not None and str(t).strip()]

    # Arrow/Parquet handles are opened lazily in each process: forked DataLoader workers must not share them.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pid": None, "_open": {}}

    def _schema(self):
        import pyarrow.parquet as pq

        if self.kind == "arrow":
            return self._arrow(0).schema
        return pq.read_schema(self.files[0])

    def _parts(self) -> tuple[list[tuple[int, int, int]], int]:
        parts, start = [], 0
        for i in range(len(self.files)):
            if self.kind == "arrow":
                groups = [(-1, self._arrow(i).num_rows)]
            else:
                metadata = self._parquet(i).metadata
                groups = [(g, metadata.row_group(g).num_rows) for g in range(metadata.num_row_groups)]
            for group, rows in groups:
                parts.append((i, group, start))
                start += rows
        return parts, start

    def _handles(self) -> dict:
        if self._pid != os.getpid():
            self._pid, self._open = os.getpid(), {}
        return self._open

    def _arrow(self, i: int):
        import pyarrow as pa

        handles = self._handles()
        if ("arrow", i) not in handles:
            handles["arrow", i] = pa.ipc.open_stream(pa.memory_map(str(self.files[i]))).read_all()
        return handles["arrow", i]

    def _parquet(self, i: int):
        import pyarrow.parquet as pq

        handles = self._handles()
        if ("parquet", i) not in handles:
            handles["parquet", i] = pq.ParquetFile(self.files[i], memory_map=True)
        return handles["parquet", i]

    def _table(self, part: int):
        file, group, _ = self.parts[part]
        if group < 0:
            return self._arrow(file)
        handles = self._handles()
        cache = handles.setdefault("groups", {})
        if part not in cache:
            if len(cache) >= _ROW_GROUP_CACHE:
                cache.pop(next(iter(cache)))
            columns = [c for c in (self.image_column, self.caption_column, self.label_column) if c]
            cache[part] = self._parquet(file).read_row_group(group, columns=columns)
        return cache[part]


def _is_integer(schema, column: str) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(schema.field(column).type)


def _image_column(schema, features: dict) -> str | None:
    import pyarrow as pa

    for name, feature in features.items():
        if isinstance(feature, dict) and feature.get("_type") == "Image":
            return name
    for field in schema:
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            return field.name
    for field in schema:
        if pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type):
            return field.name
    return None


def _pixels(cell, key: str) -> bytes | np.ndarray | None:
    """An Image-feature dict (bytes, or a path when the bytes were not embedded), raw bytes, or a nested list."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        path = cell.get("path")
        if path and Path(path).is_file():
            return Path(path).read_bytes()
        if path:
            raise CorruptSample("missing-image", key, f"the image path {path} does not exist")
        return None
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, list):
        return np.asarray(cell)
    return None


# ---------------------------------------------------------------- the spec: hf:PATH[,split=NAME][,options]


def open_hf(argument: str) -> HuggingFaceSource:
    spec = f"hf:{argument}"
    path_text, rest = split_argument(argument)
    options = parse_kv(rest, OPTIONS, spec)
    try:
        import pyarrow  # noqa: F401
    except ModuleNotFoundError:
        raise DataError(f"Data spec '{spec}' needs the pyarrow package: `{INSTALL_HINT}`.") from None
    path, split = Path(path_text), options.pop("split", None)
    if not path.exists():
        raise DataError(f"Data spec '{spec}': {path} does not exist.")
    if (path / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk: one folder per split
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        split = split or ("train" if "train" in splits else None)
        if split not in splits:
            raise DataError(f"Data spec '{spec}': choose a split with split=NAME; {path} has {splits}.")
        path, split = path / split, None
    if (path / "state.json").is_file():  # Dataset.save_to_disk
        state = json.loads((path / "state.json").read_text())
        files = [path / f["filename"] for f in state["_data_files"]]
        info = path / "dataset_info.json"
        features = json.loads(info.read_text()).get("features", {}) if info.is_file() else {}
        return HuggingFaceSource(spec, files, "arrow", features, **options)
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if split and path.is_dir():  # the Hub's layouts: data/train-00000-of-00002.parquet or train/0000.parquet
        files = [f for f in files if split in f.relative_to(path).parts[:-1] or f.name.startswith(f"{split}-")]
    if not files:
        raise DataError(f"Data spec '{spec}': no Parquet files{f' of split {split!r}' if split else ''} in {path}, and "
                        "no save_to_disk folder (state.json).")
    return HuggingFaceSource(spec, files, "parquet", _parquet_features(files[0]), **options)


def _parquet_features(path: Path) -> dict:
    """The ``datasets`` features stored in a Parquet file's schema metadata, if it was written by ``datasets``."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    if b"huggingface" not in metadata:
        return {}
    return json.loads(metadata[b"huggingface"]).get("info", {}).get("features", {})
