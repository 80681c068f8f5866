"""A CSV or TSV manifest of image-caption pairs: ``csv:pairs.csv`` (TSV when the name ends in ``.tsv``).

Columns ``image`` (a path, relative to the manifest's folder unless absolute) and ``caption``, and
optionally ``label`` (a class name; the classes are the sorted distinct names). ``image=COL``,
``caption=COL`` and ``label=COL`` name other columns (open_clip's CSVs use ``filepath`` and
``title``). An image may be any format ``decode`` reads, arrays included; an array's channel names
come from a ``.json`` beside it (``{"channel_names": [...]}``) or the ``channels=`` option. Rows are
read at start-up; a missing or unreadable image file is a skipped sample, not an error.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from vlalign.data.pairs import COMMON_OPTIONS, PairSource, RawPair, split_argument
from vlalign.data.sample import CorruptSample
from vlalign.data.specs import parse_kv
from vlalign.errors import DataError

OPTIONS = {"image": str, "caption": str, "label": str, **COMMON_OPTIONS}


class CsvSource(PairSource):
    def __init__(self, name: str, path: str | Path, image_column: str = "image", caption_column: str = "caption",
                 label_column: str = "label", channels: tuple[str, ...] | None = None, layout: str = "auto"):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"Data spec '{name}': the file {path} does not exist.")
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
        columns = list(rows[0]) if rows else []
        for column in (image_column, caption_column):
            if column not in columns:
                raise DataError(f"Data spec '{name}': {path} has no column '{column}' (columns: {columns or 'none'}). "
                                "Name the columns image,caption[,label] or pass image=COL,caption=COL.")
        labels = [(row[label_column] or "").strip() for row in rows] if label_column in columns else None
        classes = sorted(set(labels) - {""}) or None if labels else None
        super().__init__(name, classes, channels, layout)
        self.path, self.root = path, path.parent
        self.images = [row[image_column] or "" for row in rows]
        self.caption_texts = [row[caption_column] for row in rows]
        number = {c: i for i, c in enumerate(classes or [])}
        self.labels = [number.get(label) for label in labels] if labels else None  # None: an empty label cell
        self.probe()

    def __len__(self) -> int:
        return len(self.images)

    def data_files(self) -> list[str]:
        return [str(self.path)]

    def captions(self) -> list[str]:
        return [c for c in self.caption_texts if c and c.strip()]

    def read(self, index: int) -> RawPair:
        # Row 1 is the header, so data row i is line i + 2 in an editor.
        key = f"{self.path}#{index + 2}"
        image_path = self.root / self.images[index]
        label = self.labels[index] if self.labels else None
        return RawPair(key, read_file(image_path, key), self.caption_texts[index], label,
                       sidecar_channel_names(image_path, key), {"image": str(image_path)})


def read_file(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CorruptSample("missing-image", key, f"{path} does not exist") from None
    except IsADirectoryError:
        raise CorruptSample("missing-image", key, f"{path} is a folder") from None
    except OSError as err:
        raise CorruptSample("undecodable-image", key, f"{path}: {err}") from None


def sidecar_channel_names(image_path: Path, key: str) -> tuple[str, ...] | None:
    """``x.npy``'s channel names from ``x.json``: ``{"channel_names": [...]}``; None when there is no such file."""
    sidecar = image_path.with_suffix(".json")
    try:
        names = json.loads(sidecar.read_text()).get("channel_names")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as err:
        raise CorruptSample("bad-metadata", key, f"{sidecar}: {err}") from None
    return tuple(names) if names else None


def open_csv(argument: str) -> CsvSource:
    spec = f"csv:{argument}"
    path, rest = split_argument(argument)
    options = parse_kv(rest, OPTIONS, spec)
    if not path:
        raise DataError(f"Data spec '{spec}' names no file. Write csv:pairs.csv or csv:pairs.tsv.")
    columns = {f"{role}_column": options.pop(role) for role in ("image", "caption", "label") if role in options}
    return CsvSource(spec, path, **columns, **options)
