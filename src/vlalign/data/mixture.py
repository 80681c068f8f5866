"""Image-label data as text, and the union of sources: the training data of Prefix Conditioning
(Saito et al. 2023) and UniCL (Yang et al. 2022), a labelled set plus a caption set.

``LabelCaptions`` reads a labelled source as image-label data: each caption becomes a class-name
prompt ("a red circle") and ``meta["text_type"]`` is "label", which the loader turns into
``text_types`` (``vlalign.models.prefix``). ``Union`` concatenates sources that share a channel set.
"""

from __future__ import annotations

import bisect
import dataclasses
from itertools import accumulate

from vlalign.data.sample import CorruptSample, DerivedSource, Sample, Source
from vlalign.errors import DataError

DEFAULT_TEMPLATE = "a {c}"


def texts_of(source: Source) -> list[str]:
    """Every caption of ``source``: its own ``captions()`` when it has one, else read sample by sample."""
    if hasattr(source, "captions"):
        return list(source.captions())
    out = []
    for i in range(len(source)):
        try:
            out.append(source[i].caption)
        except CorruptSample:
            continue
    return out


class LabelCaptions(DerivedSource):
    """A labelled source whose captions are ``template`` filled with the class name."""

    def __init__(self, source: Source, template: str = DEFAULT_TEMPLATE):
        if not source.classes:
            raise DataError(f"Data source {source.name} has no classes: image-label data needs a labelled source.")
        if "{c}" not in template:
            raise DataError(f"Label template {template!r} has no {{c}} for the class name.")
        super().__init__(source)
        self.template = template
        self.name = f"labels:{source.name}"

    def __getitem__(self, index: int) -> Sample:
        sample = self.source[index]
        if sample.label is None or not 0 <= sample.label < len(self.classes):
            raise CorruptSample("missing-label", sample.key, f"label {sample.label!r}")
        return dataclasses.replace(sample, caption=self.template.format(c=self.classes[sample.label]),
                                   meta=sample.meta | {"text_type": "label"})

    def captions(self) -> list[str]:
        """The class-name prompts (what the tokenizer needs; reading every sample would render it)."""
        return [self.template.format(c=c) for c in self.classes]

    def __getattr__(self, name: str):  # source-specific helpers (e.g. the shapes world's config)
        if name == "source":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.source, name)


class Union:
    """Sources one after another. Classes are shared only when every source has the same ones;
    source-specific helpers (``cfg``, ``normalization``, ...) come from the first source."""

    def __init__(self, sources: list[Source]):
        if len(sources) < 2:
            raise DataError("A union needs at least two sources, e.g. union:SPEC;SPEC.")
        channels = {tuple(s.channel_names) for s in sources}
        if len(channels) > 1:
            raise DataError(f"The sources of a union must share their channels; got {sorted(channels)}.")
        self.sources = sources
        self.name = "union:" + ";".join(s.name for s in sources)
        self.classes = sources[0].classes if all(s.classes == sources[0].classes for s in sources) else None
        self.channel_names = sources[0].channel_names
        self.ends = list(accumulate(len(s) for s in sources))  # exclusive end index of each source

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range 0..{len(self) - 1}")
        which = bisect.bisect_right(self.ends, index)
        start = self.ends[which - 1] if which else 0
        return self.sources[which][index - start]

    def captions(self) -> list[str]:
        return [text for source in self.sources for text in texts_of(source)]

    def __getattr__(self, name: str):
        if name == "sources":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.sources[0], name)
