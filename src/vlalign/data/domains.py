"""The shapes world split into domains, learnt one after another: a task stream for continual pre-training.

CTP (Zhu et al., ICCV 2023, arXiv 2308.07146) studies vision-language continual pre-training on P9D,
whose tasks are product images of 9 industries: the image and caption distributions shift from task
to task while the vocabulary and the kind of text stay the same. Here a domain keeps only the
(colour, shape) combinations of one group, every object of a scene drawn from it:

- ``family``: by shape family (``round``: circle, hexagon; ``angular``: square, diamond, cross;
  ``pointed``: triangle, star), every colour;
- ``palette``: by colour palette (``warm``: red, orange, yellow; ``cool``: green, blue, cyan;
  ``neutral``: purple, white), every shape.

A domain is a plain shapes world with ``holdout_mode=only`` over the group's combinations, so every
shapes tool (rendering, captions, single-object eval scenes) works on it unchanged. Spec:
``shapes-domain:split=family,domain=round,n=2000,seed=0[,objects=1][,size=32]``.
"""

from __future__ import annotations

from vlalign.data.shapes import COLOURS, SHAPE_FAMILIES, SHAPES, ShapesConfig, ShapesWorld

PALETTES = {"warm": ("red", "orange", "yellow"), "cool": ("green", "blue", "cyan"), "neutral": ("purple", "white")}

# split -> domain -> the (colour, shape) pairs it draws from; domains are listed in stream order.
DOMAIN_SPLITS: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "family": {family: tuple((c, s) for c in COLOURS for s in shapes) for family, shapes in SHAPE_FAMILIES.items()},
    "palette": {palette: tuple((c, s) for c in colours for s in SHAPES) for palette, colours in PALETTES.items()},
}
SPEC_KEYS = ("split", "domain", "n", "seed", "objects", "size")


def domains(split: str) -> list[str]:
    """The domains of ``split`` in stream order (the order of the tasks)."""
    if split not in DOMAIN_SPLITS:
        raise ValueError(f"unknown domain split {split!r}: choose one of {', '.join(DOMAIN_SPLITS)}")
    return list(DOMAIN_SPLITS[split])


def domain_combos(split: str, domain: str) -> tuple[tuple[str, str], ...]:
    """The (colour, shape) pairs of one domain."""
    names = domains(split)
    if domain not in names:
        raise ValueError(f"split {split!r} has no domain {domain!r}: choose one of {', '.join(names)}")
    return DOMAIN_SPLITS[split][domain]


class DomainWorld(ShapesWorld):
    """A shapes world of one domain. Its ``texts`` (what a new run trains its tokenizer on) also cover the
    other domains' words: a stream's vocabulary is fixed up front, as P9D's (one BERT tokenizer for all
    tasks), so a later task's words are not split into pieces the first task never learnt."""

    def texts(self) -> list[str]:
        whole = ShapesConfig(image_size=self.cfg.image_size, min_objects=self.cfg.min_objects,
                             max_objects=self.cfg.max_objects)
        return self.captions() + ShapesWorld(min(self.n, 2000), self.seed, whole).captions()


def domain_world(split: str, domain: str, n: int, seed: int, min_objects: int = 1, max_objects: int = 3,
                 image_size: int = 64) -> DomainWorld:
    """``n`` scenes of one domain: every object's (colour, shape) is one of the domain's."""
    cfg = ShapesConfig(image_size=image_size, min_objects=min_objects, max_objects=max_objects,
                       holdout=domain_combos(split, domain), holdout_mode="only")
    return DomainWorld(n, seed, cfg)


def domain_spec(split: str, domain: str, n: int, seed: int, objects: str = "1-3", size: int = 64) -> str:
    """The data spec of one domain (checked: an unknown split or domain raises here)."""
    domain_combos(split, domain)
    return f"shapes-domain:split={split},domain={domain},n={n},seed={seed},objects={objects},size={size}"


def parse_domain_spec(args: dict[str, str]) -> DomainWorld:
    """Build a domain from spec arguments (``SPEC_KEYS``); ``split`` and ``domain`` are required."""
    unknown = [key for key in args if key not in SPEC_KEYS]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; known keys are {', '.join(SPEC_KEYS)}")
    missing = [key for key in ("split", "domain") if key not in args]
    if missing:
        choices = "; ".join(f"{split}: {'/'.join(names)}" for split, names in DOMAIN_SPLITS.items())
        raise ValueError(f"missing {missing[0]}=...; e.g. split=family,domain=round ({choices})")
    lo, _, hi = args.get("objects", "1-3").partition("-")
    try:
        n, seed, size = int(args.get("n", 2000)), int(args.get("seed", 0)), int(args.get("size", 64))
        min_objects, max_objects = int(lo), int(hi or lo)
    except ValueError as err:
        raise ValueError(f"n, seed, size and objects take integers: {err}") from None
    return domain_world(args["split"], args["domain"], n, seed, min_objects, max_objects, size)
