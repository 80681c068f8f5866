"""Hierarchical captions (SurgLaVi, Pérez et al. 2025; METHODS.md §4 row 25): one scene described at several
levels of detail, as SurgLaVi captions surgical video at phase, step and task level. On the shapes world:

- ``scene``: what the whole picture is, its object count ("a picture of three shapes");
- ``object``: which objects it holds ("a circle, a star and a square");
- ``attribute``: every object with its size and colour and where it is (the world's own caption).

``LevelCaptions(source, level)`` re-captions a shapes source (its samples carry ``meta["scene"]``) at one level.
Data spec: ``levels:scene|object|attribute:SPEC``; train on all levels with
``union:levels:scene:SPEC;levels:object:SPEC;levels:attribute:SPEC``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vlalign.data.sample import DerivedSource, Sample, Source
from vlalign.data.shapes import NUMBER_WORDS, Scene
from vlalign.errors import DataError

LEVELS = ("scene", "object", "attribute")
SCENE_TEMPLATES = ("a picture of {n} shapes", "{n} shapes on a black background", "a scene with {n} shapes")


def scene_caption(scene: Scene, rng: np.random.Generator) -> str:
    """The coarsest level: how many objects, in one of ``SCENE_TEMPLATES``."""
    template = SCENE_TEMPLATES[int(rng.integers(len(SCENE_TEMPLATES)))]
    return template.format(n=NUMBER_WORDS[len(scene.objects)]).replace("one shapes", "a single shape")


def object_caption(scene: Scene, rng: np.random.Generator) -> str:
    """The middle level: the objects' shapes, in random order, without attributes or places."""
    names = [f"a {scene.objects[i].shape}" for i in rng.permutation(len(scene.objects))]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class LevelCaptions(DerivedSource):
    """``source`` (shapes scenes) with every caption at ``level``; "attribute" keeps the source's caption."""

    def __init__(self, source: Source, level: str, seed: int = 0):
        if level not in LEVELS:
            raise DataError(f"Unknown caption level '{level}': use one of {', '.join(LEVELS)}.")
        if len(source) and "scene" not in source[0].meta:
            raise DataError(f"Caption levels need shapes scenes (meta['scene']); {source.name} has none.")
        super().__init__(source)
        self.level, self.seed = level, seed
        self.name = f"levels:{level}:{source.name}"
        if hasattr(source, "cfg"):  # the shapes world's settings (its compositional holdout) for the eval tasks
            self.cfg = source.cfg

    def caption_of(self, index: int, scene: Scene, original: str) -> str:
        rng = np.random.default_rng([self.seed, index])
        if self.level == "scene":
            return scene_caption(scene, rng)
        if self.level == "object":
            return object_caption(scene, rng)
        return original

    def captions(self) -> list[str]:
        if hasattr(self.source, "scene") and hasattr(self.source, "captions"):  # no rendering needed
            return [self.caption_of(i, self.source.scene(i), c) for i, c in enumerate(self.source.captions())]
        return [self[i].caption for i in range(len(self))]

    def __getitem__(self, index: int) -> Sample:
        sample = self.source[index]
        caption = self.caption_of(index, sample.meta["scene"], sample.caption)
        return dataclasses.replace(sample, caption=caption, meta=sample.meta | {"caption_level": self.level})
