"""The shapes world: vlalign's built-in, procedurally generated image-text dataset.

In the spirit of SyViC ("Going Beyond Nouns With Vision & Language Models Using Synthetic Data",
Cascante-Bonilla et al., ICCV 2023): rendered scenes whose attributes and spatial relations are known
exactly, so captions, questions and labels are true by construction, and compositional generalisation
can be measured by holding (colour, shape) combinations out of training.

A scene has 1-3 objects in distinct cells of a 3x3 grid on a black background. Each object has a
shape (7), a colour (8), a size (small or large) and a small jitter inside its cell; objects never
leave their cell, so relations read from the grid ("to the left of" = smaller column) are also true
in the pixels. ``ShapesWorld(n, seed)[i]`` is a pure function of ``(seed, i)``: the scene comes from
``SeedSequence([seed, i, 0])`` and the caption template from ``[seed, i, 1]``, so access order never
matters and changing a template never changes a scene.

Channels
--------
``channels="rgb"``: 3 channels, each object filled with its colour, anti-aliased edges, no noise.

``channels="stains"``: 5 single-channel "stains", like fluorescence microscopy where each dye marks
different structures (the multi-channel setting ChannelViT targets, Bao et al. 2023, arXiv 2309.16108):

====  ==========  ==================================================================
 idx  name        shows
====  ==========  ==================================================================
 0    round       silhouettes of round shapes only (circle, hexagon), full intensity
 1    angular     silhouettes of angular shapes only (square, diamond, cross)
 2    pointed     silhouettes of pointed shapes only (triangle, star)
 3    brightness  every object as a round spot of its size, intensity = colour's luma
 4    warmth      every object as a round spot of its size, intensity = colour's warmth
====  ==========  ==================================================================

Both spot intensities are quantised to three levels (``STAIN_LEVELS``), so that colours share them
exactly; with continuous levels a model reads the colour off either channel alone to within a grey
level, and dropping one costs nothing (a probe on channel histograms kept 99.5% accuracy):

============  ==========  ==============  ==========
brightness    warm (0.9)  neutral (0.55)  cool (0.2)
============  ==========  ==============  ==========
dim (0.3)     red         purple          blue
mid (0.6)     orange                      green
bright (0.9)  yellow      white           cyan
============  ==========  ==============  ==========

The channels are complementary, so every lost channel costs accuracy:

- an object's outline is visible only in its family's channel (0-2); the spots in 3-4 say where an
  object is and how large, not its shape. Without its family channel a shape can at best be
  narrowed down by which family channels stay dark.
- colour is readable only from the pair (brightness, warmth): brightness alone leaves red/blue/purple,
  orange/green or yellow/cyan/white; warmth alone leaves red/orange/yellow, blue/green/cyan or
  purple/white.

So the first object's "colour shape" class needs its family channel and both spot channels. Mild
Gaussian sensor noise (``noise_std`` grey levels; a crop of one fixed noise field at an offset hashed
from the scene, so rendering stays a pure function of the scene) is added in stains mode only: an
unused stain is dark noise, not an exact zero image, as in a real microscope.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from vlalign.data.sample import Sample

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon")
# Well separated on black: the closest pair (yellow, orange) is still ~84 apart in RGB.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 210, 60),
    "blue": (40, 90, 255),
    "yellow": (240, 220, 40),
    "purple": (150, 50, 230),
    "orange": (255, 140, 20),
    "cyan": (40, 220, 230),
    "white": (240, 240, 240),
}
# (brightness, warmth) of each colour in the stains channels: the colour's luma and hue, each
# quantised to three levels so that only the pair identifies the colour (module docstring).
_DIM, _MID, _BRIGHT = 0.3, 0.6, 0.9
_COOL, _NEUTRAL, _WARM = 0.2, 0.55, 0.9
STAIN_LEVELS: dict[str, tuple[float, float]] = {
    "red": (_DIM, _WARM),
    "green": (_MID, _COOL),
    "blue": (_DIM, _COOL),
    "yellow": (_BRIGHT, _WARM),
    "purple": (_DIM, _NEUTRAL),
    "orange": (_MID, _WARM),
    "cyan": (_BRIGHT, _COOL),
    "white": (_BRIGHT, _NEUTRAL),
}
SIZES = ("small", "large")
GRID = 3
# Row-major names of the 3x3 cells, and the phrase a caption uses for each.
POSITIONS = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
POSITION_PHRASES = (
    "in the top left corner", "at the top", "in the top right corner",
    "on the left", "in the centre", "on the right",
    "in the bottom left corner", "at the bottom", "in the bottom right corner",
)  # fmt: skip
RELATIONS = ("to the left of", "to the right of", "above", "below")
SHAPE_FAMILIES = {
    "round": ("circle", "hexagon"),
    "angular": ("square", "diamond", "cross"),
    "pointed": ("triangle", "star"),
}
RGB_CHANNELS = ("red", "green", "blue")
STAIN_CHANNELS = (*SHAPE_FAMILIES, "brightness", "warmth")
HOLDOUT_MODES = ("exclude", "only", "any")
MAX_OBJECTS = 3
MIN_IMAGE_SIZE = 24  # below this a small shape is 3 px or less and shapes stop being recognisable
NUMBER_WORDS = ("zero", "one", "two", "three")

# Object diameter as a fraction of a cell's width: small and large differ ~1.7x in width, ~2.8x in area.
SIZE_FRACTIONS = {"small": 0.42, "large": 0.72}
JITTER_FRACTION = 0.15  # largest jitter of an object's centre, as a fraction of the cell width
CELL_MARGIN = 1  # px kept free at each cell edge, so objects in neighbouring cells never touch
SUPERSAMPLE = 4  # masks are drawn at 4x and box-filtered: anti-aliased edges


@dataclass(frozen=True)
class ShapeObject:
    """One object: what it is and which grid cell it sits in (row 0 = top, col 0 = left)."""

    shape: str
    colour: str
    size: str
    row: int
    col: int
    dx: float = 0.0  # jitter inside the cell, in [-1, 1] of the largest allowed jitter
    dy: float = 0.0

    def __post_init__(self):
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("colour", self.colour, tuple(COLOURS))
        _check_choice("size", self.size, SIZES)
        if not (0 <= self.row < GRID and 0 <= self.col < GRID):
            raise ValueError(f"grid cell ({self.row}, {self.col}) is outside the {GRID}x{GRID} grid")

    @property
    def name(self) -> str:
        """The class name, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"

    @property
    def phrase(self) -> str:
        """The full noun phrase without article, e.g. ``"small red circle"``."""
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """1-3 objects in distinct grid cells; ``objects[0]`` decides the label."""

    objects: tuple[ShapeObject, ...]

    def __post_init__(self):
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        cells = [(o.row, o.col) for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"objects must sit in distinct grid cells, got cells {cells}")


@dataclass(frozen=True)
class ShapesConfig:
    """How scenes are drawn and rendered. ``holdout`` lists (colour, shape) pairs."""

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 3
    holdout: tuple[tuple[str, str], ...] = ()
    # "exclude": no object has a held-out combo; "only": every object has one; "any": no constraint.
    holdout_mode: str = "exclude"
    channels: str = "rgb"  # "rgb" or "stains"
    noise_std: float = 4.0  # sensor noise in grey levels, stains mode only

    def __post_init__(self):
        if self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size={self.image_size} is too small: use at least {MIN_IMAGE_SIZE}")
        if not 1 <= self.min_objects <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(
                f"objects must satisfy 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, "
                f"got min_objects={self.min_objects}, max_objects={self.max_objects}"
            )
        _check_choice("holdout_mode", self.holdout_mode, HOLDOUT_MODES)
        _check_choice("channels", self.channels, ("rgb", "stains"))
        if self.noise_std < 0:
            raise ValueError(f"noise_std={self.noise_std} must be >= 0")
        # Lists (from YAML or JSON) become tuples, so configs stay hashable and compare equal.
        object.__setattr__(self, "holdout", tuple(tuple(combo) for combo in self.holdout))
        for combo in self.holdout:
            if len(combo) != 2:
                raise ValueError(f"holdout entries are (colour, shape) pairs, got {combo!r}")
            _check_choice("holdout colour", combo[0], tuple(COLOURS))
            _check_choice("holdout shape", combo[1], SHAPES)
        if self.holdout_mode == "only" and not self.holdout:
            raise ValueError('holdout_mode="only" needs at least one holdout (colour, shape) pair')
        if self.holdout_mode == "exclude" and not allowed_combos(self):
            raise ValueError("holdout excludes every (colour, shape) combination: nothing left to draw")


def _check_choice(what: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}: choose one of {', '.join(map(str, choices))}")


# ---------------------------------------------------------------------------------------------
# Classes and combinations


def class_names() -> list[str]:
    """All "colour shape" class names, colour-major: index = colour_idx * len(SHAPES) + shape_idx."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def class_index(colour: str, shape: str) -> int:
    return list(COLOURS).index(colour) * len(SHAPES) + SHAPES.index(shape)


@lru_cache(maxsize=64)
def allowed_combos(cfg: ShapesConfig) -> tuple[tuple[str, str], ...]:
    """The (colour, shape) pairs objects may take under ``cfg.holdout_mode``."""
    every = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    held = set(cfg.holdout)
    if cfg.holdout_mode == "exclude":
        return tuple(c for c in every if c not in held)
    if cfg.holdout_mode == "only":
        return tuple(c for c in every if c in held)
    return tuple(every)


# ---------------------------------------------------------------------------------------------
# Sampling


def sample_scene(rng: np.random.Generator, cfg: ShapesConfig) -> Scene:
    """Draw a scene: object count, distinct cells, then each object's combo, size and jitter."""
    combos = allowed_combos(cfg)
    # One call to the generator for everything: per-call overhead dominates at this size.
    u = rng.random(1 + GRID * GRID + 4 * cfg.max_objects)
    n_objects = cfg.min_objects + int(u[0] * (cfg.max_objects - cfg.min_objects + 1))
    cells = np.argsort(u[1 : 1 + GRID * GRID])[:n_objects]  # a uniform random set of distinct cells
    objects = []
    for k, cell in enumerate(cells):
        draw = u[1 + GRID * GRID + 4 * k :][:4]  # combo, size, dx, dy
        colour, shape = combos[int(draw[0] * len(combos))]
        size = SIZES[int(draw[1] * len(SIZES))]
        row, col = divmod(int(cell), GRID)
        objects.append(ShapeObject(shape, colour, size, row, col, float(2 * draw[2] - 1), float(2 * draw[3] - 1)))
    return Scene(tuple(objects))


# ---------------------------------------------------------------------------------------------
# Geometry and rendering


def channel_names(cfg: ShapesConfig) -> tuple[str, ...]:
    return RGB_CHANNELS if cfg.channels == "rgb" else STAIN_CHANNELS


def _cell_bounds(index: int, image_size: int) -> tuple[int, int]:
    """Pixel range [start, end) of grid row or column ``index``."""
    return round(index * image_size / GRID), round((index + 1) * image_size / GRID)


def object_diameter(size: str, image_size: int) -> int:
    """Side of the object's square box in pixels; odd, so the box has a centre pixel."""
    return 2 * round((SIZE_FRACTIONS[size] * image_size / GRID - 1) / 2) + 1


def object_box(obj: ShapeObject, image_size: int) -> tuple[int, int, int]:
    """``(y0, x0, d)``: top-left pixel and side of the object's box, which lies inside its cell."""
    d = object_diameter(obj.size, image_size)
    cell = image_size / GRID
    starts = []
    for index, jitter in ((obj.row, obj.dy), (obj.col, obj.dx)):
        lo, hi = _cell_bounds(index, image_size)
        lo, hi = lo + CELL_MARGIN, hi - CELL_MARGIN
        max_jitter = max(0, min(round(JITTER_FRACTION * cell), (hi - lo - d) // 2))
        start = lo + (hi - lo - d) // 2 + round(jitter * max_jitter)
        starts.append(min(max(start, lo), hi - d))
    return starts[0], starts[1], d


def object_centre(obj: ShapeObject, image_size: int) -> tuple[int, int]:
    """``(y, x)`` of the pixel at the centre of the object's box (always inside the shape)."""
    y0, x0, d = object_box(obj, image_size)
    return y0 + d // 2, x0 + d // 2


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Vertices in the unit box [0, 1]^2 (y down). Squares and diamonds are never rotated: a
    rotation would turn one into the other."""

    def ring(n: int, radius: float, start_deg: float) -> list[tuple[float, float]]:
        return [
            (0.5 + radius * math.cos(math.radians(start_deg + 360 * k / n)),
             0.5 + radius * math.sin(math.radians(start_deg + 360 * k / n)))
            for k in range(n)
        ]  # fmt: skip

    if shape == "square":
        return [(0.08, 0.08), (0.92, 0.08), (0.92, 0.92), (0.08, 0.92)]
    if shape == "diamond":
        return [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    if shape == "triangle":
        return [(0.5, 0.02), (0.98, 0.92), (0.02, 0.92)]
    if shape == "hexagon":
        return ring(6, 0.5, 0.0)
    if shape == "star":
        # A fat star (inner/outer radius 0.45) keeps its points readable at ~9 px.
        outer, inner = ring(5, 0.5, -90.0), ring(5, 0.225, -54.0)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        a, b = 0.32, 0.68
        return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    raise ValueError(f"no polygon for shape {shape!r}")


@lru_cache(maxsize=None)
def shape_alpha(shape: str, diameter: int) -> np.ndarray:
    """Coverage in [0, 1] of ``shape`` drawn in a ``diameter``-pixel box.  # [d, d] float32"""
    big = diameter * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse((0, 0, big - 1, big - 1), fill=255)
    else:
        draw.polygon([(x * (big - 1), y * (big - 1)) for x, y in _unit_polygon(shape)], fill=255)
    fine = np.asarray(canvas, dtype=np.float32) / 255.0  # [d*S, d*S]
    alpha = fine.reshape(diameter, SUPERSAMPLE, diameter, SUPERSAMPLE).mean(axis=(1, 3))  # [d, d]
    alpha.setflags(write=False)
    return alpha


def _family_index(shape: str) -> int:
    return next(i for i, members in enumerate(SHAPE_FAMILIES.values()) if shape in members)


@lru_cache(maxsize=None)
def _patch(shape: str, colour: str, diameter: int, channels: str) -> np.ndarray:
    """The object's pixels, ready to paste on black.  # [C, d, d] uint8"""
    alpha = shape_alpha(shape, diameter)  # [d, d]
    if channels == "rgb":
        intensity = np.array(COLOURS[colour], dtype=np.float32)  # [3]
        patch = intensity[:, None, None] * alpha  # [3, d, d]
    else:
        spot = shape_alpha("circle", diameter)
        patch = np.zeros((len(STAIN_CHANNELS), diameter, diameter), dtype=np.float32)  # [5, d, d]
        patch[_family_index(shape)] = 255 * alpha
        brightness, warmth = STAIN_LEVELS[colour]
        patch[3] = 255 * brightness * spot
        patch[4] = 255 * warmth * spot
    out = np.rint(patch).astype(np.uint8)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def _noise_field(num_channels: int, image_size: int, noise_std: float) -> np.ndarray:
    """A fixed field of Gaussian noise, twice the image in each direction.  # [C, 2H, 2W] int16"""
    rng = np.random.default_rng(0)
    field = np.rint(rng.normal(0.0, noise_std, (num_channels, 2 * image_size, 2 * image_size)))
    field = field.astype(np.int16)
    field.setflags(write=False)
    return field


def _scene_noise(scene: Scene, num_channels: int, cfg: ShapesConfig) -> np.ndarray:
    """The scene's noise: a crop of the fixed field at an offset hashed from the scene's content,
    so it is the same in every process (drawing fresh noise per image was 10x slower).  # [C, H, W]"""
    size = cfg.image_size
    offset = zlib.crc32(repr(scene).encode())
    y, x = offset % size, (offset // size) % size
    return _noise_field(num_channels, size, cfg.noise_std)[:, y : y + size, x : x + size]


def render_into(out: np.ndarray, scene: Scene, cfg: ShapesConfig) -> None:
    """Render ``scene`` into ``out`` (zeroed here first).  # out: [C, H, W] uint8"""
    out.fill(0)
    for obj in scene.objects:
        y0, x0, d = object_box(obj, cfg.image_size)
        out[:, y0 : y0 + d, x0 : x0 + d] = _patch(obj.shape, obj.colour, d, cfg.channels)
    if cfg.channels == "stains" and cfg.noise_std > 0:
        noisy = out + _scene_noise(scene, out.shape[0], cfg)  # int16
        np.clip(noisy, 0, 255, out=noisy)
        out[...] = noisy


def render(scene: Scene, cfg: ShapesConfig) -> np.ndarray:
    """The scene as an image.  # [C, H, W] uint8"""
    out = np.empty((len(channel_names(cfg)), cfg.image_size, cfg.image_size), dtype=np.uint8)
    render_into(out, scene, cfg)
    return out


# ---------------------------------------------------------------------------------------------
# Language: relations, captions, questions


def true_relations(a: ShapeObject, b: ShapeObject) -> list[str]:
    """Every relation in ``RELATIONS`` that holds for "a <relation> b", read from the grid cells."""
    relations = []
    if a.col < b.col:
        relations.append("to the left of")
    if a.col > b.col:
        relations.append("to the right of")
    if a.row < b.row:
        relations.append("above")
    if a.row > b.row:
        relations.append("below")
    return relations


def _pick(rng: np.random.Generator, options: list | tuple):
    return options[int(rng.integers(len(options)))]


_SINGLE_TEMPLATES = (
    "a {obj} {where}",
    "a picture of a {obj} {where}",
    "there is a {obj} {where}",
    "{where} there is a {obj}",
    "a {obj} on a black background, {where}",
    "one shape: a {obj} {where}",
)
_PAIR_TEMPLATES = (
    "a {a} {rel} a {b}",
    "a picture of a {a} {rel} a {b}",
    "two shapes: a {a} {rel} a {b}",
    "there is a {a} {rel} a {b}",
)
_TRIPLE_TEMPLATES = (
    "a {a} {rel} a {b}, and a {c} {where}",
    "three shapes: a {a} {rel} a {b}, and a {c} {where}",
    "a picture of a {a} {rel} a {b}, with a {c} {where}",
    "a {c} {where}, and a {a} {rel} a {b}",
)


def describe(scene: Scene, rng: np.random.Generator) -> str:
    """A natural caption naming every object's size, colour and shape, plus its position (one
    object) or a true relation between two objects (more). The template and the relation (when
    several hold) are drawn from ``rng``."""
    objects = scene.objects
    if len(objects) == 1:
        where = POSITION_PHRASES[objects[0].row * GRID + objects[0].col]
        template = _pick(rng, _SINGLE_TEMPLATES)
        return template.format(obj=objects[0].phrase, where=where)
    first, second = objects[0], objects[1]
    if rng.random() < 0.5:  # either object may lead the sentence
        first, second = second, first
    rel = _pick(rng, true_relations(first, second))
    if len(objects) == 2:
        return _pick(rng, _PAIR_TEMPLATES).format(a=first.phrase, rel=rel, b=second.phrase)
    third = objects[2]
    where = POSITION_PHRASES[third.row * GRID + third.col]
    template = _pick(rng, _TRIPLE_TEMPLATES)
    return template.format(a=first.phrase, rel=rel, b=second.phrase, c=third.phrase, where=where)


def _referring_phrases(scene: Scene) -> list[str | None]:
    """For each object the shortest of "colour shape" / "size colour shape" that picks it out
    alone, or None when neither does (two identical objects)."""
    phrases = []
    for obj in scene.objects:
        if sum(o.name == obj.name for o in scene.objects) == 1:
            phrases.append(obj.name)
        elif sum(o.phrase == obj.phrase for o in scene.objects) == 1:
            phrases.append(obj.phrase)
        else:
            phrases.append(None)
    return phrases


def questions(scene: Scene) -> list[tuple[str, str, str]]:
    """(question, answer, question_type) triples whose answer the scene fixes unambiguously.
    Types: "colour", "shape", "size", "count", "relation"; relation answers are "yes"/"no"."""
    objects = scene.objects
    out: list[tuple[str, str, str]] = []
    for obj in objects:
        if sum(o.shape == obj.shape for o in objects) == 1:
            out.append((f"what colour is the {obj.shape}?", obj.colour, "colour"))
        elif sum((o.size, o.shape) == (obj.size, obj.shape) for o in objects) == 1:
            out.append((f"what colour is the {obj.size} {obj.shape}?", obj.colour, "colour"))
        if sum(o.colour == obj.colour for o in objects) == 1:
            out.append((f"what shape is the {obj.colour} object?", obj.shape, "shape"))
        elif sum((o.size, o.colour) == (obj.size, obj.colour) for o in objects) == 1:
            out.append((f"what shape is the {obj.size} {obj.colour} object?", obj.shape, "shape"))
        if sum(o.name == obj.name for o in objects) == 1:
            out.append((f"what size is the {obj.name}?", obj.size, "size"))
    out.append(("how many shapes are there?", NUMBER_WORDS[len(objects)], "count"))
    for colour in dict.fromkeys(o.colour for o in objects):
        count = sum(o.colour == colour for o in objects)
        out.append((f"how many {colour} shapes are there?", NUMBER_WORDS[count], "count"))
    phrases = _referring_phrases(scene)
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            if phrases[i] is None or phrases[j] is None:
                continue
            holds = true_relations(objects[i], objects[j])
            for rel in RELATIONS:
                answer = "yes" if rel in holds else "no"
                out.append((f"is the {phrases[i]} {rel} the {phrases[j]}?", answer, "relation"))
    return out


# ---------------------------------------------------------------------------------------------
# The data source


class ShapesWorld:
    """``n`` shapes scenes as a map-style ``Source``; sample ``i`` depends on ``(seed, i)`` only."""

    def __init__(self, n: int, seed: int = 0, cfg: ShapesConfig = ShapesConfig()):
        if n < 1:
            raise ValueError(f"n={n}: a shapes world needs at least 1 sample")
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        self.n, self.seed, self.cfg = n, seed, cfg
        self.name = spec_string(n, seed, cfg)
        self.classes = class_names()
        self.channel_names = channel_names(cfg)

    def __len__(self) -> int:
        return self.n

    def _index(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.name} with {self.n} samples")
        return int(i)

    def _rng(self, i: int, stream: int) -> np.random.Generator:
        # Independent streams per sample: stream 0 draws the scene, stream 1 the caption.
        return np.random.default_rng(np.random.SeedSequence([self.seed, i, stream]))

    def scene(self, i: int) -> Scene:
        return sample_scene(self._rng(self._index(i), 0), self.cfg)

    def caption(self, i: int) -> str:
        return describe(self.scene(i), self._rng(self._index(i), 1))

    def __getitem__(self, i: int) -> Sample:
        i = self._index(i)
        scene = self.scene(i)
        first = scene.objects[0]
        return Sample(
            key=f"shapes-{self.seed}-{i:07d}",
            image=render(scene, self.cfg),
            caption=describe(scene, self._rng(i, 1)),
            label=class_index(first.colour, first.shape),
            channel_names=self.channel_names,
            meta={
                "scene": scene,
                "shape": first.shape,
                "colour": first.colour,
                "size": first.size,
                "n_objects": len(scene.objects),
                "position": POSITIONS[first.row * GRID + first.col],
            },
        )

    def render_all(self, progress: bool = False) -> np.ndarray:
        """Every image at once.  # [n, C, H, W] uint8"""
        size = self.cfg.image_size
        images = np.empty((self.n, len(self.channel_names), size, size), dtype=np.uint8)
        indices = range(self.n)
        if progress:
            from vlalign.progress import progress as progress_bar

            indices = progress_bar(indices, desc=f"rendering {self.name}", unit="img")
        for i in indices:
            render_into(images[i], self.scene(i), self.cfg)
        return images

    def captions(self) -> list[str]:
        return [self.caption(i) for i in range(self.n)]


# ---------------------------------------------------------------------------------------------
# Spec strings: "shapes:n=2000,seed=7,objects=1-3,channels=stains,holdout=green-triangle+blue-star"

DEFAULT_N = 2000
SPEC_KEYS = ("n", "seed", "objects", "size", "channels", "holdout", "holdout_mode", "noise")


def _spec_int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"shapes spec: {key}={value!r} is not an integer") from None


def _parse_holdout(value: str) -> tuple[tuple[str, str], ...]:
    combos = []
    for item in filter(None, value.split("+")):
        colour, sep, shape = item.partition("-")
        if not sep:
            raise ValueError(f"shapes spec: holdout item {item!r} must be colour-shape, e.g. green-triangle")
        combos.append((colour, shape))
    return tuple(combos)


def parse_shapes_spec(args: dict[str, str]) -> ShapesWorld:
    """Build a world from spec arguments, e.g. ``{"n": "2000", "seed": "7", "objects": "1-2",
    "channels": "stains", "holdout": "green-triangle+blue-star", "holdout_mode": "only",
    "size": "64", "noise": "4"}``. ``objects`` is a count or a range ``lo-hi``; n defaults to 2000."""
    unknown = [key for key in args if key not in SPEC_KEYS]
    if unknown:
        raise ValueError(f"shapes spec: unknown key {unknown[0]!r}; known keys are {', '.join(SPEC_KEYS)}")
    settings: dict = {}
    if "objects" in args:
        lo, _, hi = args["objects"].partition("-")
        settings["min_objects"] = _spec_int("objects", lo)
        settings["max_objects"] = _spec_int("objects", hi or lo)
    if "size" in args:
        settings["image_size"] = _spec_int("size", args["size"])
    if "channels" in args:
        settings["channels"] = args["channels"]
    if "holdout" in args:
        settings["holdout"] = _parse_holdout(args["holdout"])
    if "holdout_mode" in args:
        settings["holdout_mode"] = args["holdout_mode"]
    if "noise" in args:
        try:
            settings["noise_std"] = float(args["noise"])
        except ValueError:
            raise ValueError(f"shapes spec: noise={args['noise']!r} is not a number") from None
    cfg = ShapesConfig(**settings)
    n = _spec_int("n", args["n"]) if "n" in args else DEFAULT_N
    seed = _spec_int("seed", args["seed"]) if "seed" in args else 0
    return ShapesWorld(n, seed, cfg)


def spec_string(n: int, seed: int, cfg: ShapesConfig) -> str:
    """The canonical spec of a world; ``parse_shapes_spec`` of its arguments rebuilds it."""
    default = ShapesConfig()
    parts = [f"n={n}", f"seed={seed}"]
    if (cfg.min_objects, cfg.max_objects) != (default.min_objects, default.max_objects):
        parts.append(f"objects={cfg.min_objects}-{cfg.max_objects}")
    if cfg.image_size != default.image_size:
        parts.append(f"size={cfg.image_size}")
    if cfg.channels != default.channels:
        parts.append(f"channels={cfg.channels}")
    if cfg.holdout:
        parts.append("holdout=" + "+".join(f"{c}-{s}" for c, s in cfg.holdout))
    if cfg.holdout_mode != default.holdout_mode:
        parts.append(f"holdout_mode={cfg.holdout_mode}")
    if cfg.noise_std != default.noise_std:
        parts.append(f"noise={cfg.noise_std:g}")
    return "shapes:" + ",".join(parts)
