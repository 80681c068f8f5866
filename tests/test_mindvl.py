"""MindVL: a weight-averaged run from the CLI, and test-time resolution search with resampled positions."""

import pytest
import torch

from vlalign.api import load
from vlalign.checkpoint import complete_checkpoints, load_tensors
from vlalign.cli import main
from vlalign.errors import CheckpointError
from vlalign.eval.resolution import at_resolution, resolution_search
from vlalign.eval.tasks import run_tasks
from vlalign.models.positions import resample_positions
from vlalign.models.vit import PatchEmbed
from vlalign.train import run_training


@pytest.fixture(scope="module")
def run_with_checkpoints(tmp_path_factory, tiny_cfg):
    cfg = tiny_cfg
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.keep_last_k = 4, 2, 2
    cfg.data.train = "shapes:n=128,seed=0"
    run_dir = tmp_path_factory.mktemp("avg-run")
    run_training(cfg, run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def tiny_cfg():
    from vlalign.recipes import get_recipe

    cfg = get_recipe("tiny")
    cfg.train.log_every = 1
    return cfg


def test_average_cli_writes_a_loadable_run_of_the_mean_weights(run_with_checkpoints, tmp_path, capsys):
    out = tmp_path / "averaged"
    assert main(["average", str(run_with_checkpoints), "--last", "2", "--out", str(out)]) == 0
    newest = complete_checkpoints(run_with_checkpoints / "checkpoints")[-2:]
    a, b = (load_tensors(path / "model.safetensors") for path in newest)
    averaged = load(out)
    assert averaged.step == 4
    state = averaged.model.state_dict()
    for name, value in a.items():
        if value.is_floating_point():
            assert torch.allclose(state[name], (a[name].double() + b[name].double()).div(2).float(), atol=1e-7), name
    assert averaged.encode_text(["a red circle"]).shape == (1, averaged.embed_dim)
    # Training cannot resume from weights alone; a second average into the same place is refused.
    with pytest.raises(CheckpointError, match="cannot resume training"):
        run_training(averaged.config, out, progress=False)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        from vlalign.train.averaging import average_run

        average_run(run_with_checkpoints, 2, out)


def test_resampling_keeps_the_trained_table_and_the_grid_layout():
    pos = torch.randn(1, 16, 8)
    assert resample_positions(pos, 4) is pos
    # A table that varies along columns only must still vary along columns only after resampling
    # (a transposed or scrambled reshape would break this).
    columns = torch.linspace(-1, 1, 4)
    table = columns.repeat(4)[None, :, None].expand(1, 16, 3).contiguous()  # [1, 4*4, 3], row-major
    out = resample_positions(table, 6).reshape(6, 6, 3)
    assert torch.allclose(out, out[:1].expand(6, 6, 3), atol=1e-6)
    assert torch.all(out[0, 1:, 0] > out[0, :-1, 0])  # increasing left to right, as trained


def test_a_vit_reads_other_sizes_and_its_own_size_unchanged():
    torch.manual_seed(0)
    embed = PatchEmbed(image_size=16, patch_size=4, in_channels=3, width=8)
    image = torch.randn(2, 3, 16, 16)
    direct = embed.proj(image.view(2, 3, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, 48)) + embed.pos
    assert torch.equal(embed(image).tokens, direct)
    assert embed(torch.randn(2, 3, 24, 24)).tokens.shape == (2, 36, 8)
    with pytest.raises(ValueError, match="multiple of its patch size"):
        embed(torch.randn(2, 3, 18, 18))


def test_resolution_search_picks_the_best_selection_score(trained_tiny_run):
    model = load(trained_tiny_run)
    select, test = "shapes:n=32,seed=2,objects=1", "shapes:n=32,seed=3,objects=1"
    found = resolution_search(model, [16, 32, 48], select, test)
    assert [p["image_size"] for p in found.curve] == [16, 32, 48]
    assert found.trained_size == 32
    best = max(p["select"] for p in found.curve)
    assert next(p for p in found.curve if p["image_size"] == found.best_size)["select"] == best
    # At the trained size the search scores exactly what `vlalign eval` scores.
    zeroshot = {r["labels"]: r["top1"] for r in run_tasks(model, ["zeroshot"], test).results}
    assert found.curve[1]["test"] == zeroshot["shape+colour"]
    with pytest.raises(Exception, match="multiple of the patch size"):
        at_resolution(model, 30)
