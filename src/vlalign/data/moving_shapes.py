"""Moving shapes: short clips of the shapes world in which objects move, appear, disappear or change
colour, each with a caption of what happens ("a red circle moves left, then a blue square appears").

A clip has ``num_frames`` frames and 1-2 *events* played one after another: the frames are cut into
as many equal segments and event i happens inside segment i. Events:

- ``move``: one visible object slides one grid cell left, right, up or down, across its segment;
- ``appear`` / ``disappear``: an object becomes visible / invisible in the middle of its segment;
- ``change``: a visible object turns another colour in the middle of its segment.

Every object of a clip has its own (colour, shape), at every frame, so "a red circle" names one
object; objects sit in distinct cells of the 3x3 grid and a move only enters a free cell, so shapes
never overlap. Reversing a clip in time turns each of its events into its opposite (left/right,
up/down, appear/disappear, and swaps their order): a model that pools frames without their order
cannot tell a clip from its reverse, which ``counterfactual_captions`` turns into a test.

``MovingShapes(n, seed)[i]`` is a pure function of ``(seed, i)`` (``SeedSequence([seed, i])``).
Samples carry the clip as ``image`` ``[T, 3, H, W]`` uint8 and the events in ``meta["events"]``.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace

import numpy as np

from vlalign.data.sample import Sample
from vlalign.data.shapes import COLOURS, GRID, MIN_IMAGE_SIZE, SHAPES, SIZES, object_diameter, shape_alpha

EVENT_KINDS = ("move", "appear", "disappear", "change")
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "appear": "disappear",
            "disappear": "appear"}
MAX_VISIBLE = 3


@dataclass(frozen=True)
class Track:
    """One object over the clip: fixed shape and size; cell, colour and visibility per frame."""

    shape: str
    size: str
    colours: tuple[str, ...]  # per frame
    rows: tuple[float, ...]  # per frame, cell units (fractional while moving)
    cols: tuple[float, ...]
    visible: tuple[bool, ...]


@dataclass(frozen=True)
class Event:
    """What happens in one segment: ``kind`` to the object ``colour shape`` (its colour before the event);
    ``detail`` is the direction of a move or the new colour of a change; frames ``[start, end)``."""

    kind: str
    shape: str
    colour: str
    detail: str
    start: int
    end: int

    def phrase(self) -> str:
        obj = f"a {self.colour} {self.shape}"
        if self.kind == "move":
            return f"{obj} moves {self.detail}"
        if self.kind == "change":
            return f"{obj} turns {self.detail}"
        return f"{obj} {self.kind}s"


@dataclass(frozen=True)
class Clip:
    tracks: tuple[Track, ...]
    events: tuple[Event, ...]

    @property
    def caption(self) -> str:
        return caption_of(self.events)


def caption_of(events: tuple[Event, ...] | list[Event]) -> str:
    return ", then ".join(event.phrase() for event in events)


@dataclass(frozen=True)
class MovingShapesConfig:
    image_size: int = 32
    num_frames: int = 8
    min_events: int = 1
    max_events: int = 2
    min_objects: int = 1  # visible in the first frame
    max_objects: int = 2

    def __post_init__(self):
        if self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size={self.image_size} is too small: use at least {MIN_IMAGE_SIZE}")
        if not 1 <= self.min_events <= self.max_events:
            raise ValueError(f"events must satisfy 1 <= min <= max, got {self.min_events}-{self.max_events}")
        if self.num_frames < 2 * self.max_events:
            raise ValueError(f"num_frames={self.num_frames} is too few for {self.max_events} events: each event "
                             f"needs a segment of at least 2 frames, so use num_frames >= {2 * self.max_events}")
        if not 1 <= self.min_objects <= self.max_objects <= MAX_VISIBLE:
            raise ValueError(f"objects must satisfy 1 <= min <= max <= {MAX_VISIBLE}, "
                             f"got {self.min_objects}-{self.max_objects}")


class _State:
    """Mutable per-object state while a clip is being generated."""

    def __init__(self, shape: str, size: str, colour: str, row: int, col: int, visible: bool):
        self.shape, self.size, self.colour, self.row, self.col, self.visible = shape, size, colour, row, col, visible
        self.colours: list[str] = []
        self.rows: list[float] = []
        self.cols: list[float] = []
        self.shown: list[bool] = []

    def record(self, row: float | None = None, col: float | None = None) -> None:
        self.colours.append(self.colour)
        self.rows.append(self.row if row is None else row)
        self.cols.append(self.col if col is None else col)
        self.shown.append(self.visible)


def _segments(num_frames: int, num_events: int) -> list[tuple[int, int]]:
    bounds = [round(k * num_frames / num_events) for k in range(num_events + 1)]
    return list(itertools.pairwise(bounds))


def _free_cells(objects: list[_State]) -> list[tuple[int, int]]:
    taken = {(o.row, o.col) for o in objects}
    return [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in taken]


def _new_object(rng: np.random.Generator, objects: list[_State], visible: bool) -> _State:
    used = {(o.colour, o.shape) for o in objects}
    combos = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in used]
    colour, shape = combos[int(rng.integers(len(combos)))]
    cells = _free_cells(objects)
    row, col = cells[int(rng.integers(len(cells)))]
    return _State(shape, SIZES[int(rng.integers(len(SIZES)))], colour, row, col, visible)


def _options(objects: list[_State]) -> list[tuple[str, _State, str]]:
    """Every event that can happen now: (kind, object, detail); "appear" objects are drawn later."""
    visible = [o for o in objects if o.visible]
    taken = {(o.row, o.col) for o in objects}
    options = []
    for o in visible:
        for name, (dr, dc) in DIRECTIONS.items():
            r, c = o.row + dr, o.col + dc
            if 0 <= r < GRID and 0 <= c < GRID and (r, c) not in taken:
                options.append(("move", o, name))
        used = {(p.colour, p.shape) for p in objects if p is not o}
        for colour in COLOURS:
            if colour != o.colour and (colour, o.shape) not in used:
                options.append(("change", o, colour))
        options.append(("disappear", o, ""))
    if len(visible) < MAX_VISIBLE and _free_cells(objects):
        options.append(("appear", None, ""))
    return options


def sample_clip(rng: np.random.Generator, cfg: MovingShapesConfig) -> Clip:
    """Draw objects and events; an event kind is drawn first (uniformly among those possible), then its
    object and detail, so that every kind is about equally common."""
    objects: list[_State] = []
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        objects.append(_new_object(rng, objects, visible=True))
    num_events = int(rng.integers(cfg.min_events, cfg.max_events + 1))
    events = []
    for start, end in _segments(cfg.num_frames, num_events):
        options = _options(objects)
        kinds = sorted({kind for kind, _, _ in options}, key=EVENT_KINDS.index)
        kind = kinds[int(rng.integers(len(kinds)))]
        mine = [option for option in options if option[0] == kind]
        _, obj, detail = mine[int(rng.integers(len(mine)))]
        if kind == "appear":
            obj = _new_object(rng, objects, visible=False)
            for _ in range(start):  # invisible until now
                obj.record()
            objects.append(obj)
        events.append(Event(kind, obj.shape, obj.colour, detail, start, end))
        switch = start + (end - start) // 2  # appear / disappear / change happen mid-segment
        for frame in range(start, end):
            for o in objects:
                if o is not obj:
                    o.record()
                elif kind == "move":
                    dr, dc = DIRECTIONS[detail]
                    t = (frame - start) / (end - start - 1)
                    o.record(o.row + t * dr, o.col + t * dc)
                else:
                    if frame == switch:
                        o.visible = {"appear": True, "disappear": False}.get(kind, o.visible)
                        o.colour = detail if kind == "change" else o.colour
                    o.record()
        if kind == "move":
            dr, dc = DIRECTIONS[detail]
            obj.row, obj.col = obj.row + dr, obj.col + dc
    tracks = tuple(Track(o.shape, o.size, tuple(o.colours), tuple(o.rows), tuple(o.cols), tuple(o.shown))
                   for o in objects)
    return Clip(tracks, tuple(events))


def render_clip(clip: Clip, cfg: MovingShapesConfig) -> np.ndarray:
    """The clip's frames on black.  # [T, 3, H, W] uint8"""
    size = cfg.image_size
    out = np.zeros((cfg.num_frames, 3, size, size), dtype=np.uint8)
    cell = size / GRID
    for track in clip.tracks:
        d = object_diameter(track.size, size)
        alpha = shape_alpha(track.shape, d)  # [d, d]
        for t in range(cfg.num_frames):
            if not track.visible[t]:
                continue
            y0 = round((track.rows[t] + 0.5) * cell - d / 2)
            x0 = round((track.cols[t] + 0.5) * cell - d / 2)
            colour = np.array(COLOURS[track.colours[t]], dtype=np.float32)[:, None, None]  # [3, 1, 1]
            patch = np.rint(colour * alpha).astype(np.uint8)  # [3, d, d]
            region = out[t, :, y0 : y0 + d, x0 : x0 + d]
            np.maximum(region, patch, out=region)
    return out


def counterfactual_captions(events: tuple[Event, ...]) -> dict[str, str]:
    """Captions that differ from the true one only in what needs the frames' order, by test:

    - ``direction``: every move in the opposite direction;
    - ``appearance``: every appear/disappear the other way round;
    - ``order``: the events in reverse order (two or more events whose phrases differ).

    Each is the caption of the clip played backwards in that one respect; a test is absent when the
    clip has nothing to flip for it."""
    out = {}
    if any(e.kind == "move" for e in events):
        out["direction"] = caption_of([replace(e, detail=OPPOSITE[e.detail]) if e.kind == "move" else e
                                       for e in events])
    if any(e.kind in ("appear", "disappear") for e in events):
        out["appearance"] = caption_of([replace(e, kind=OPPOSITE[e.kind]) if e.kind in OPPOSITE else e
                                        for e in events])
    reverse = caption_of(list(reversed(events)))
    if len(events) > 1 and reverse != caption_of(events):
        out["order"] = reverse
    return out


class MovingShapes:
    """``n`` clips as a map-style ``Source``; sample ``i`` depends on ``(seed, i)`` only."""

    classes = None
    channel_names = ("red", "green", "blue")

    def __init__(self, n: int, seed: int = 0, cfg: MovingShapesConfig = MovingShapesConfig()):
        if n < 1:
            raise ValueError(f"n={n}: moving shapes needs at least 1 clip")
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        self.n, self.seed, self.cfg = n, seed, cfg
        self.name = spec_string(n, seed, cfg)

    def __len__(self) -> int:
        return self.n

    def clip(self, i: int) -> Clip:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.name} with {self.n} clips")
        return sample_clip(np.random.default_rng(np.random.SeedSequence([self.seed, int(i)])), self.cfg)

    def __getitem__(self, i: int) -> Sample:
        clip = self.clip(i)
        return Sample(key=f"moving-shapes-{self.seed}-{i:07d}", image=render_clip(clip, self.cfg),
                      caption=clip.caption, channel_names=self.channel_names,
                      meta={"events": [asdict(e) for e in clip.events], "clip": clip})

    def captions(self) -> list[str]:
        return [self.clip(i).caption for i in range(self.n)]


# ---------------------------------------------------------------------------------------------
# Spec strings: "moving-shapes:n=2000,seed=0,frames=8,events=1-2,objects=1-2,size=32"

SPEC_KEYS = {"n": int, "seed": int, "frames": int, "events": str, "objects": str, "size": int}


def _range(key: str, value: str) -> tuple[int, int]:
    lo, _, hi = value.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"{key}={value!r} must be a count or a range lo-hi, e.g. 1-2") from None


def build_moving_shapes(args: dict) -> MovingShapes:
    """From parsed spec arguments (``SPEC_KEYS``); n defaults to 2000."""
    settings = {}
    if "frames" in args:
        settings["num_frames"] = args["frames"]
    if "size" in args:
        settings["image_size"] = args["size"]
    if "events" in args:
        settings["min_events"], settings["max_events"] = _range("events", args["events"])
    if "objects" in args:
        settings["min_objects"], settings["max_objects"] = _range("objects", args["objects"])
    return MovingShapes(args.get("n", 2000), args.get("seed", 0), MovingShapesConfig(**settings))


def spec_string(n: int, seed: int, cfg: MovingShapesConfig) -> str:
    return (f"moving-shapes:n={n},seed={seed},frames={cfg.num_frames},events={cfg.min_events}-{cfg.max_events},"
            f"objects={cfg.min_objects}-{cfg.max_objects},size={cfg.image_size}")
