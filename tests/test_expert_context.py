"""VILA-M3 expert context: the cell expert, its report, and questions that carry it."""

import pytest
import torch

from vlalign.data.expert_context import (
    ExpertContext,
    expert_reporter,
    load_expert,
    save_expert,
    with_report,
)
from vlalign.data.shapes import Scene, ShapeObject, ShapesConfig, ShapesWorld
from vlalign.data.shapes_qa import ShapesQA
from vlalign.data.specs import build_source
from vlalign.errors import DataError
from vlalign.models.cell_expert import (
    cell_crops,
    cell_targets,
    oracle_report,
    to_unit,
    train_cell_expert,
)


def test_cell_crops_follow_the_row_major_grid():
    images = torch.zeros(1, 3, 48, 48)
    for cell in range(9):
        row, col = divmod(cell, 3)
        images[0, :, row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] = cell / 10
    crops = cell_crops(images)  # [1, 9, 3, 16, 16]
    assert crops.shape == (1, 9, 3, 16, 16)
    for cell in range(9):
        torch.testing.assert_close(crops[0, cell], torch.full((3, 16, 16), cell / 10))


def test_targets_and_oracle_report_read_the_scene():
    scene = Scene((ShapeObject("star", "red", "large", 2, 2), ShapeObject("circle", "blue", "small", 0, 1)))
    targets = cell_targets([scene])
    assert targets["shape"][0].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 4]  # circle = 1 + 0, star = 1 + 3
    assert targets["colour"][0, 0] == -100 and targets["size"][0, 8] == 1
    assert oracle_report(scene) == "small blue circle top, large red star bottom right"


def test_a_trained_expert_reports_the_objects_it_sees():
    world = ShapesWorld(120, seed=3, cfg=ShapesConfig(image_size=24))
    images, scenes = list(world.render_all()), [world.scene(i) for i in range(120)]
    expert = train_cell_expert(images, scenes, steps=40, batch_size=16)
    with torch.no_grad():
        predicted = expert(to_unit(images[:60]))["shape"].argmax(-1) > 0  # [60, 9] occupied?
    occupied = cell_targets(scenes[:60])["shape"] > 0
    assert (predicted == occupied).float().mean() > 0.9
    reports = expert.describe(images[:3])
    assert [len(r.split(", ")) if r else 0 for r in reports] == predicted[:3].sum(1).tolist()


def test_expert_context_prefixes_questions_and_round_trips_a_saved_expert(tmp_path):
    qa = ShapesQA(ShapesWorld(4, seed=0, cfg=ShapesConfig(image_size=48)))
    oracle = ExpertContext(qa, expert_reporter("oracle"), "oracle")
    sample, original = oracle[0], qa[0]
    assert sample.meta["question"] == with_report(original.meta["question"], oracle_report(original.meta["scene"]))
    assert sample.meta["answer"] == original.meta["answer"]
    assert ExpertContext(ShapesWorld(2, seed=0), expert_reporter("oracle"), "oracle")[0].caption  # no question
    torch.manual_seed(0)
    expert = train_cell_expert([qa[0].image], [qa[0].meta["scene"]], steps=2, batch_size=1)
    save_expert(expert, tmp_path / "e.safetensors")
    loaded = build_source(f"expert:{tmp_path / 'e.safetensors'}:shapes-qa:n=4,seed=0,size=48")
    assert loaded[0].meta["expert_report"] == load_expert(tmp_path / "e.safetensors").describe([qa[0].image])[0]
    assert loaded[0].meta["expert_report"] == expert.describe([qa[0].image])[0]
    with pytest.raises(DataError, match="does not exist"):
        build_source(f"expert:{tmp_path / 'missing.safetensors'}:shapes-qa:n=4,seed=0")
