"""The shapes world: determinism, truthful captions/labels/questions, holdouts, stains, spec parsing."""

import itertools
import re

import numpy as np
import pytest

from vlalign.data.sample import Source
from vlalign.data.shapes import (
    COLOURS,
    GRID,
    POSITION_PHRASES,
    SHAPE_FAMILIES,
    SHAPES,
    SIZES,
    STAIN_CHANNELS,
    STAIN_LEVELS,
    Scene,
    ShapeObject,
    ShapesConfig,
    ShapesWorld,
    channel_names,
    object_box,
    object_centre,
    object_diameter,
    parse_shapes_spec,
    questions,
    render,
    sample_scene,
)

RGB = ShapesConfig()
STAINS_CLEAN = ShapesConfig(channels="stains", noise_std=0.0)


def reference_relation(a: ShapeObject, rel: str, b: ShapeObject) -> bool:
    """Whether "a <rel> b" holds, read directly from grid rows (0 = top) and columns (0 = left)."""
    return {
        "to the left of": a.col < b.col,
        "to the right of": a.col > b.col,
        "above": a.row < b.row,
        "below": a.row > b.row,
    }[rel]


def matching(scene: Scene, words: str) -> list[ShapeObject]:
    """Objects whose size/colour/shape agree with every word of a description like "small red"."""
    return [o for o in scene.objects if all(w in (o.size, o.colour, o.shape) for w in words.split())]


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_and_index_give_identical_samples_in_any_access_order():
    forward, backward = ShapesWorld(40, seed=5), ShapesWorld(40, seed=5)
    a = [forward[i] for i in range(40)]
    b = [backward[i] for i in reversed(range(40))][::-1]
    for x, y in zip(a, b):
        assert x.key == y.key
        assert np.array_equal(x.image, y.image)
        assert x.caption == y.caption and x.label == y.label
    # A world of a different length still gives the same sample i.
    assert ShapesWorld(1000, seed=5)[17].caption == a[17].caption


def test_different_seeds_give_different_samples():
    a, b = ShapesWorld(30, seed=0), ShapesWorld(30, seed=1)
    differing = sum(not np.array_equal(a[i].image, b[i].image) for i in range(30))
    assert differing >= 28
    assert a.captions() != b.captions()


def test_sample_fields_follow_the_source_protocol():
    world = ShapesWorld(10, seed=3)
    assert isinstance(world, Source)
    assert len(world.classes) == len(COLOURS) * len(SHAPES) >= 48
    sample = world[7]
    assert sample.key == "shapes-3-0000007"
    assert sample.image.dtype == np.uint8 and sample.image.shape == (3, 64, 64)
    assert sample.channel_names == ("red", "green", "blue") == world.channel_names
    with pytest.raises(IndexError):
        world[10]


# --- labels, captions, pixels --------------------------------------------------------------------


def test_label_and_meta_describe_the_first_object():
    world = ShapesWorld(100, seed=2)
    for i in range(100):
        sample = world[i]
        first = sample.meta["scene"].objects[0]
        assert world.classes[sample.label] == f"{first.colour} {first.shape}"
        assert (sample.meta["colour"], sample.meta["shape"], sample.meta["size"]) == (
            first.colour,
            first.shape,
            first.size,
        )
        assert sample.meta["n_objects"] == len(sample.meta["scene"].objects)


def test_caption_names_every_object_and_single_objects_position():
    world = ShapesWorld(300, seed=4)
    for i in range(300):
        scene, caption = world.scene(i), world.caption(i)
        for obj in scene.objects:
            assert f"{obj.size} {obj.colour} {obj.shape}" in caption, (caption, obj)
        if len(scene.objects) == 1:
            obj = scene.objects[0]
            assert POSITION_PHRASES[obj.row * GRID + obj.col] in caption


def test_relations_in_captions_are_true_for_the_grid_cells():
    relation = re.compile(r"a (\w+ \w+ \w+) (to the left of|to the right of|above|below) a (\w+ \w+ \w+)")
    world = ShapesWorld(400, seed=8)
    checked = 0
    for i in range(400):
        scene, caption = world.scene(i), world.caption(i)
        found = relation.search(caption)
        assert (found is not None) == (len(scene.objects) > 1), caption
        if found:
            left, rel, right = found.groups()
            pairs = itertools.permutations(scene.objects, 2)
            assert any(
                a.phrase == left and b.phrase == right and reference_relation(a, rel, b) for a, b in pairs
            ), caption
            checked += 1
    assert checked > 200


def test_rgb_pixels_show_each_object_in_its_colour_on_black():
    world = ShapesWorld(200, seed=6)
    for i in range(200):
        scene, image = world.scene(i), world[i].image
        covered = np.zeros(image.shape[1:], dtype=bool)
        for obj in scene.objects:
            y, x = object_centre(obj, RGB.image_size)
            assert tuple(image[:, y, x]) == COLOURS[obj.colour], (i, obj)
            y0, x0, d = object_box(obj, RGB.image_size)
            covered[y0 : y0 + d, x0 : x0 + d] = True
        assert not image[:, ~covered].any()  # background is black outside the objects' boxes


@pytest.mark.parametrize("image_size", [32, 64, 96])
def test_objects_stay_inside_their_grid_cell(image_size):
    cell = image_size / GRID
    for shape, size, row, col, dx, dy in itertools.product(
        SHAPES, SIZES, range(GRID), range(GRID), (-1.0, 0.0, 1.0), (-1.0, 1.0)
    ):
        y0, x0, d = object_box(ShapeObject(shape, "red", size, row, col, dx, dy), image_size)
        assert round(row * cell) <= y0 and y0 + d <= round((row + 1) * cell)
        assert round(col * cell) <= x0 and x0 + d <= round((col + 1) * cell)
    assert object_diameter("large", 64) >= 1.5 * object_diameter("small", 64)


def test_every_shape_covers_its_centre_pixel():
    for shape, size in itertools.product(SHAPES, SIZES):
        scene = Scene((ShapeObject(shape, "white", size, 1, 1),))
        y, x = object_centre(scene.objects[0], 64)
        assert tuple(render(scene, RGB)[:, y, x]) == COLOURS["white"]


def test_most_captions_of_1000_scenes_are_unique():
    captions = ShapesWorld(1000, seed=0).captions()
    assert len(set(captions)) / len(captions) > 0.95


# --- holdout -------------------------------------------------------------------------------------


def test_holdout_exclude_never_draws_a_held_out_combo():
    held = (("green", "triangle"), ("blue", "star"))
    cfg = ShapesConfig(holdout=held, holdout_mode="exclude")
    rng = np.random.default_rng(0)
    drawn = {(o.colour, o.shape) for _ in range(2000) for o in sample_scene(rng, cfg).objects}
    assert not drawn & set(held)
    assert len(drawn) == len(COLOURS) * len(SHAPES) - 2


def test_holdout_only_always_draws_held_out_combos():
    held = (("green", "triangle"), ("blue", "star"))
    world = ShapesWorld(2000, seed=1, cfg=ShapesConfig(max_objects=1, holdout=held, holdout_mode="only"))
    for i in range(2000):
        scene = world.scene(i)
        assert len(scene.objects) == 1
        assert (scene.objects[0].colour, scene.objects[0].shape) in held
    labels = {world[i].label for i in range(50)}
    assert {world.classes[label] for label in labels} == {"green triangle", "blue star"}


# --- questions -----------------------------------------------------------------------------------


def reference_answer(scene: Scene, question: str) -> str:
    """Answer a question from the scene with an independent parser; asserts it is unambiguous."""
    words = ("zero", "one", "two", "three")
    if m := re.fullmatch(r"what colour is the (.+)\?", question):
        (obj,) = matching(scene, m[1])
        return obj.colour
    if m := re.fullmatch(r"what shape is the (.+) object\?", question):
        (obj,) = matching(scene, m[1])
        return obj.shape
    if m := re.fullmatch(r"what size is the (.+)\?", question):
        (obj,) = matching(scene, m[1])
        return obj.size
    if question == "how many shapes are there?":
        return words[len(scene.objects)]
    if m := re.fullmatch(r"how many (\w+) shapes are there\?", question):
        return words[len(matching(scene, m[1]))]
    m = re.fullmatch(r"is the (.+) (to the left of|to the right of|above|below) the (.+)\?", question)
    assert m, f"unrecognised question {question!r}"
    (a,), (b,) = matching(scene, m[1]), matching(scene, m[3])
    return "yes" if reference_relation(a, m[2], b) else "no"


def test_question_answers_are_correct_and_unambiguous():
    world = ShapesWorld(300, seed=9)
    seen_types, relation_answers = set(), set()
    for i in range(300):
        scene = world.scene(i)
        for question, answer, kind in questions(scene):
            assert reference_answer(scene, question) == answer, (scene, question)
            seen_types.add(kind)
            if kind == "relation":
                relation_answers.add(answer)
    assert seen_types == {"colour", "shape", "count", "relation", "size"}
    assert relation_answers == {"yes", "no"}


def test_questions_skip_objects_that_cannot_be_told_apart():
    twins = Scene(
        (ShapeObject("circle", "red", "small", 0, 0), ShapeObject("circle", "red", "small", 0, 2))
    )
    qs = questions(twins)
    assert ("how many red shapes are there?", "two", "count") in qs
    assert not [q for q in qs if q[2] in ("relation", "colour", "shape", "size")]


# --- stains --------------------------------------------------------------------------------------


def test_stains_channels_split_shape_families_and_colour():
    assert channel_names(STAINS_CLEAN) == STAIN_CHANNELS
    angular_and_pointed = Scene(
        (ShapeObject("square", "red", "large", 0, 0), ShapeObject("star", "blue", "small", 2, 2))
    )
    image = render(angular_and_pointed, STAINS_CLEAN)
    assert image.shape == (5, 64, 64) and image.dtype == np.uint8
    assert not image[0].any()  # no round shapes: the "round" stain is empty
    for obj in angular_and_pointed.objects:
        y, x = object_centre(obj, 64)
        family = [name for name, members in SHAPE_FAMILIES.items() if obj.shape in members][0]
        on = [STAIN_CHANNELS.index(family), 3, 4]
        brightness, warmth = STAIN_LEVELS[obj.colour]
        assert image[STAIN_CHANNELS.index(family), y, x] == 255
        assert abs(image[3, y, x] - 255 * brightness) <= 0.5 and abs(image[4, y, x] - 255 * warmth) <= 0.5
        assert not image[[c for c in range(3) if c not in on], y, x].any()
    noisy = render(angular_and_pointed, ShapesConfig(channels="stains"))
    assert 0 < noisy[0].max() < 40  # sensor noise only
    assert np.array_equal(noisy, render(angular_and_pointed, ShapesConfig(channels="stains")))


def test_colour_needs_both_brightness_and_warmth():
    # Only the pair identifies a colour; each level alone is shared by two or three colours.
    assert len(set(STAIN_LEVELS.values())) == len(COLOURS)
    for channel in (0, 1):
        groups = {}
        for colour, levels in STAIN_LEVELS.items():
            groups.setdefault(levels[channel], []).append(colour)
        assert all(len(colours) >= 2 for colours in groups.values()), groups


def test_shape_outline_is_only_in_the_family_channel():
    # The spot channels look the same for every shape of a size; the family channel tells them apart.
    spots = {
        shape: render(Scene((ShapeObject(shape, "white", "large", 1, 1),)), STAINS_CLEAN) for shape in SHAPES
    }
    for a, b in itertools.combinations(SHAPES, 2):
        assert np.array_equal(spots[a][3:], spots[b][3:])
        assert not np.array_equal(spots[a][:3], spots[b][:3])


@pytest.mark.parametrize("cfg", [RGB, ShapesConfig(channels="stains", image_size=48)])
def test_render_all_matches_rendering_each_item(cfg):
    world = ShapesWorld(25, seed=11, cfg=cfg)
    images = world.render_all()
    assert images.shape == (25, len(world.channel_names), cfg.image_size, cfg.image_size)
    for i in range(25):
        assert np.array_equal(images[i], world[i].image)


# --- spec parsing --------------------------------------------------------------------------------


def test_spec_parser_reads_every_key():
    world = parse_shapes_spec(
        {
            "n": "2000",
            "seed": "7",
            "objects": "1",
            "channels": "stains",
            "holdout": "green-triangle+blue-star",
            "holdout_mode": "only",
            "size": "48",
            "noise": "2",
        }
    )
    assert len(world) == 2000 and world.seed == 7
    assert world.cfg == ShapesConfig(
        image_size=48,
        min_objects=1,
        max_objects=1,
        holdout=(("green", "triangle"), ("blue", "star")),
        holdout_mode="only",
        channels="stains",
        noise_std=2.0,
    )
    assert world.channel_names == STAIN_CHANNELS


def test_world_name_is_a_spec_that_rebuilds_it():
    cfg = ShapesConfig(min_objects=2, holdout=(("red", "cross"),), channels="stains")
    world = ShapesWorld(50, seed=3, cfg=cfg)
    kind, _, body = world.name.partition(":")
    rebuilt = parse_shapes_spec(dict(part.split("=") for part in body.split(",")))
    assert kind == "shapes" and (len(rebuilt), rebuilt.seed, rebuilt.cfg) == (50, 3, cfg)


@pytest.mark.parametrize(
    "args, named",
    [
        ({"n": "10", "colour": "red"}, "colour"),
        ({"n": "ten"}, "ten"),
        ({"holdout": "green-blob"}, "blob"),
        ({"holdout": "greentriangle"}, "greentriangle"),
        ({"channels": "cmyk"}, "cmyk"),
        ({"holdout_mode": "only"}, "holdout"),
        ({"objects": "0-2"}, "min_objects=0"),
        ({"objects": "1-4"}, "max_objects=4"),
        ({"size": "8"}, "image_size=8"),
    ],
)
def test_spec_parser_rejects_bad_input_by_name(args, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        parse_shapes_spec(args)
