"""PTP position-guided prompts: true for the scene, drawn reproducibly, trained as an auxiliary term
or appended to captions; and the grounding probe that reads them back."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlalign.config import ObjectiveConfig, RunConfig, apply_overrides
from vlalign.data.loader import collate
from vlalign.data.ptp import PROMPT, all_prompts, block_of, position_prompts, sample_prompt
from vlalign.data.shapes import COLOURS, GRID, ShapesConfig, ShapesWorld, render
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import ConfigError, DataError
from vlalign.eval.grounding import BLOCKS, block_accuracy, grounding_items
from vlalign.models.dual_encoder import AlignmentOutput
from vlalign.objectives import build_objective
from vlalign.objectives.contrastive import clip_loss

PATTERN = re.compile(r"the block (\d) has a (\w+) (\w+)")


@pytest.mark.parametrize("size", [24, 64])
def test_every_prompt_is_true_in_the_rendered_pixels(size):
    world = ShapesWorld(60, seed=3, cfg=ShapesConfig(image_size=size))
    cell = [round(i * size / GRID) for i in range(GRID + 1)]
    for i in range(len(world)):
        scene = world.scene(i)
        image = render(scene, world.cfg)  # [3, H, W]
        for obj, prompt in zip(scene.objects, position_prompts(scene, size)):
            block, colour, shape = PATTERN.fullmatch(prompt).groups()
            block = int(block)
            assert (colour, shape) == (obj.colour, obj.shape)
            assert block == obj.row * GRID + obj.col  # the pixel-box rule agrees with the scene's grid cell
            row, col = divmod(block, GRID)
            region = image[:, cell[row] : cell[row + 1], cell[col] : cell[col + 1]]  # the block's pixels
            exact = (region == np.array(COLOURS[colour], np.uint8)[:, None, None]).all(0)
            assert exact.any(), (i, prompt)  # the named colour is drawn inside that block


def test_prompt_draw_is_a_function_of_seed_and_key():
    world = ShapesWorld(40, seed=0)
    samples = [world[i] for i in range(40)]
    first = [sample_prompt(s, seed=7) for s in samples]
    assert first == [sample_prompt(s, seed=7) for s in reversed(samples)][::-1]
    assert all(p in position_prompts(s.meta["scene"], 64) for p, s in zip(first, samples))
    multi = [s for s in samples if len(s.meta["scene"].objects) > 1]
    assert len({sample_prompt(s, seed) for s in multi for seed in range(6)}) > len(multi)  # not always object 0
    assert set(first) <= set(all_prompts()) and len(all_prompts()) == 9 * 56
    with pytest.raises(DataError, match="no shapes scene"):
        sample_prompt(type(samples[0])("k", samples[0].image, "a caption"), seed=0)


def test_collate_adds_prompts_or_appends_them():
    world = ShapesWorld(8, seed=1)
    tokenizer = train_tokenizer(world.captions() + all_prompts(), 300)
    transform = ImageTransform(64, 3)
    aux = collate(world, list(range(8)), tokenizer, 48, transform, negative_seed=5, position_prompts="auxiliary")
    prompts = [sample_prompt(world[i], 5) for i in range(8)]
    assert torch.equal(aux["prompt_ids"], tokenizer(prompts, 48)[0]) and aux["captions"] == world.captions()
    concat = collate(world, list(range(8)), tokenizer, 48, transform, negative_seed=5, position_prompts="concat")
    assert concat["captions"] == [f"{c}. {p}" for c, p in zip(world.captions(), prompts)]
    assert "prompt_ids" not in concat


def test_the_run_tokenizer_learns_the_prompt_words(tmp_path):
    from vlalign.train.setup import build_tokenizer

    world = ShapesWorld(300, seed=0)
    lengths = {}
    for name in ("clip", "ptp"):
        cfg = apply_overrides(RunConfig(), [f"objective.name={name}"])
        lengths[name] = len(build_tokenizer(cfg, world, tmp_path / name).encode("the block 4 has a red circle"))
    assert lengths["ptp"] < lengths["clip"]  # "block", "has" are whole tokens, not letters


def test_ptp_objective_adds_the_weighted_prompt_infonce():
    g = torch.Generator().manual_seed(0)
    image, text, prompt = (F.normalize(torch.randn(6, 8, generator=g), dim=-1) for _ in range(3))
    scale = torch.tensor(4.0)
    out = AlignmentOutput(image, text, scale, torch.tensor(0.0), None, None, prompt_embeds=prompt)
    loss, metrics = build_objective(ObjectiveConfig(name="ptp", ptp_weight=0.3))(out, {})
    expected = clip_loss(image, text, scale) + 0.3 * clip_loss(image, prompt, scale)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["loss/ptp"] == pytest.approx(clip_loss(image, prompt, scale).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="position prompts"):
        build_objective(ObjectiveConfig(name="ptp"))(AlignmentOutput(image, text, scale, scale, None, None), {})


def test_grounding_accuracy_counts_ties_as_wrong_and_skips_ambiguous_objects():
    scores = torch.zeros(3, BLOCKS)
    scores[0, 4] = 1.0  # clear win at block 4
    scores[1, [2, 5]] = 1.0  # tie between the truth (2) and 5
    scores[2, 0] = 1.0  # wins at 0, truth is 8
    assert block_accuracy(scores, torch.tensor([4, 2, 8])) == pytest.approx(1 / 3)
    world = ShapesWorld(200, seed=2, cfg=ShapesConfig(image_size=24))
    samples = [world[i] for i in range(200)]
    image_index, objects, blocks = grounding_items(samples, 24)
    for i, obj, block in zip(image_index, objects, blocks):
        scene = samples[i].meta["scene"]
        assert sum(o.name == obj.name for o in scene.objects) == 1 and block == block_of(obj, 24)
    assert len(objects) < sum(len(s.meta["scene"].objects) for s in samples)  # duplicates exist and are skipped
    assert PROMPT.format(block=3, name="red circle") == "the block 3 has a red circle"


def test_ptp_runs_end_to_end_and_is_refused_with_gradcache(tmp_path, tiny_cfg):
    from vlalign.api import load
    from vlalign.eval.tasks import run_tasks
    from vlalign.train import run_training

    cfg = apply_overrides(tiny_cfg, ["objective.name=ptp", "train.steps=2", "data.train=shapes:n=64,seed=0",
                                     "eval.zeroshot_n=16"])
    run_training(cfg, tmp_path, progress=False)
    (result,) = run_tasks(load(tmp_path), ["grounding"]).results
    assert result["n"] > 16 and 0 <= result["block_top1"] <= 1 and 0 <= result["caption_top1"] <= 1
    cfg.train.accum_steps = 2
    from vlalign.train.trainer import check_layout
    with pytest.raises(ConfigError, match="GradCache"):
        check_layout(cfg)
    with pytest.raises(ConfigError, match="ptp_weight"):
        apply_overrides(RunConfig(), ["objective.ptp_weight=-1"])
