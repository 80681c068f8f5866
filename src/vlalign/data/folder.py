"""A folder of class sub-folders (the ImageFolder layout): ``folder:DIR``.

Classes are the sub-folders' names, sorted, with ``_`` read as a space (``ankle_boot`` -> "ankle
boot"). Every image or array file below a class folder (any depth, sorted by path) is a sample;
its caption is the text of a ``.txt`` file beside it with the same stem, or else a prompt template
filled with the class name: ``template=a photo of a {c}`` by default, several joined by ``|``
used in turn (sample i takes template i mod n). Arrays take channel names from a ``.json`` beside
them, as in ``csv:``.
"""

from __future__ import annotations

from pathlib import Path

from vlalign.data.csvfile import read_file, sidecar_channel_names
from vlalign.data.pairs import COMMON_OPTIONS, PairSource, RawPair, split_argument
from vlalign.data.specs import parse_kv
from vlalign.errors import DataError

FILE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".npy", ".npz")
DEFAULT_TEMPLATE = "a photo of a {c}"
OPTIONS = {"template": str, **COMMON_OPTIONS}


class FolderSource(PairSource):
    def __init__(self, name: str, root: str | Path, templates: tuple[str, ...] = (DEFAULT_TEMPLATE,),
                 channels: tuple[str, ...] | None = None, layout: str = "auto"):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"Data spec '{name}': {root} is not a folder.")
        for template in templates:
            if "{c}" not in template:
                raise DataError(f"Data spec '{name}': the template '{template}' has no {{c}} for the class name.")
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DataError(f"Data spec '{name}': {root} has no class sub-folders (expected DIR/CLASS/IMAGE files).")
        super().__init__(name, [f.name.replace("_", " ") for f in folders], channels, layout)
        self.root, self.caption_templates = root, templates
        self.files: list[Path] = []
        self.labels: list[int] = []
        for label, folder in enumerate(folders):
            found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in FILE_SUFFIXES and p.is_file())
            self.files += found
            self.labels += [label] * len(found)
        self.probe()

    def __len__(self) -> int:
        return len(self.files)

    def data_files(self) -> list[str]:
        return [str(p) for p in self.files]

    def captions(self) -> list[str]:
        return [c for c in map(self._caption, range(len(self))) if c]

    def templates(self) -> tuple[str, ...]:
        """Zero-shot prompt templates (the caption templates), as other labelled sources give them."""
        return self.caption_templates

    def read(self, index: int) -> RawPair:
        path = self.files[index]
        key = str(path)
        return RawPair(key, read_file(path, key), self._caption(index), self.labels[index],
                       sidecar_channel_names(path, key))

    def _caption(self, index: int) -> str:
        caption_file = self.files[index].with_suffix(".txt")
        if caption_file.is_file():
            return caption_file.read_text(encoding="utf-8", errors="replace").strip()
        return self.caption_templates[index % len(self.caption_templates)].format(c=self.classes[self.labels[index]])


def open_folder(argument: str) -> FolderSource:
    spec = f"folder:{argument}"
    path, rest = split_argument(argument)
    options = parse_kv(rest, OPTIONS, spec)
    if not path:
        raise DataError(f"Data spec '{spec}' names no folder. Write folder:DIR.")
    templates = tuple(options.pop("template", DEFAULT_TEMPLATE).split("|"))
    return FolderSource(spec, path, templates, **options)
