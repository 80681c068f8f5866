"""Checkpoint completeness and strictness (RELIABILITY.md test 7).

Uses the session's finished ``reference_run`` (read only; tests that damage a checkpoint copy it).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from reliability_helpers import RUN, assert_same_checkpoint, train_argv
from safetensors import safe_open

from vlalign.checkpoint import (
    REQUIRED_FILES,
    REQUIRED_KEYS,
    REQUIRED_RANK_KEYS,
    REQUIRED_RNG_KEYS,
    complete_checkpoints,
    load_checkpoint,
)
from vlalign.cli import main
from vlalign.config import OptimConfig, apply_overrides
from vlalign.data.loader import Loader
from vlalign.data.specs import build_source
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import CheckpointError
from vlalign.models.dual_encoder import DualEncoder, PooledProjection
from vlalign.models.text import TextTransformer
from vlalign.models.vit import PatchEmbed, VisionTransformer
from vlalign.recipes import get_recipe
from vlalign.train.distributed import Replicate
from vlalign.train.optim import build_optimizer
from vlalign.train.resume import restore, save
from vlalign.train.setup import build_components
from vlalign.train.step import TrainState, train_step

LEGACY = Path(__file__).parent / "assets" / "legacy"


@pytest.mark.parametrize("override, line", [
    ("model.vision.size=vit-tiny", "model.vision.size: 'vit-micro' -> 'vit-tiny'"),  # width and depth
    ("model.vision.patch_size=16", "model.vision.patch_size: 8 -> 16"),
    ("model.vision.in_channels=4", "model.vision.in_channels: 3 -> 4"),
    ("model.text.vocab_size=200", "model.text.vocab_size: 300 -> 200"),  # the tokenizer
    ("data.batch_size=64", "data.batch_size: 32 -> 64"),  # the global batch
])
def test_resuming_with_a_changed_structure_fails_with_a_field_by_field_diff(reference_run, capsys, override, line):
    assert main(train_argv(reference_run, RUN + [override])) == 2
    err = capsys.readouterr().err
    assert "structural fields (saved -> requested)" in err and line in err and "Traceback" not in err


def test_checkpoints_hold_no_pickle(reference_run):
    for checkpoint in complete_checkpoints(reference_run / "checkpoints"):
        for path in checkpoint.iterdir():
            head = path.read_bytes()[:2]
            assert head[:1] != b"\x80" and head != b"PK", f"{path} looks like a pickle or a torch.save zip"
            if path.suffix == ".safetensors":
                with safe_open(path, "pt") as f:  # tensors only, loaded without executing anything
                    assert list(f.keys())
            elif path.suffix == ".json":
                json.loads(path.read_text())


def test_restoring_then_saving_reproduces_every_component_bitwise(reference_run, tmp_path):
    """A checkpoint loaded into fresh objects and saved again is the same checkpoint: nothing is lost."""
    cfg = apply_overrides(get_recipe("tiny"), RUN)
    shutil.copy(reference_run / "tokenizer.json", tmp_path / "tokenizer.json")
    parts = build_components(cfg, tmp_path)
    optimizer, strategy = build_optimizer(parts.model, cfg.optim), Replicate()
    source = reference_run / "checkpoints" / "step-15"
    state = restore(source, parts.model, optimizer, parts.loader, strategy)
    copy = save(tmp_path, parts.model, optimizer, parts.loader, state, cfg, strategy)
    assert copy.name == "step-15"
    assert_same_checkpoint(copy, source)


def damaged_copy(reference_run, tmp_path, edit_meta, remove_file: str | None) -> Path:
    path = tmp_path / "step-20"
    shutil.copytree(reference_run / "checkpoints" / "step-20", path)
    meta = json.loads((path / "state.json").read_text())
    edit_meta(meta)
    (path / "state.json").write_text(json.dumps(meta))
    if remove_file:
        (path / remove_file).unlink()
    return path


REQUIRED = ([f"file:{f}" for f in REQUIRED_FILES] + [f"key:{k}" for k in REQUIRED_KEYS if k != "format_version"]
            + [f"rank:{k}" for k in REQUIRED_RANK_KEYS] + [f"rng:{k}" for k in REQUIRED_RNG_KEYS])


def test_a_saved_checkpoint_has_every_required_component(reference_run):
    path = reference_run / "checkpoints" / "step-20"
    meta = json.loads((path / "state.json").read_text())
    assert all((path / f).is_file() for f in REQUIRED_FILES) and set(REQUIRED_KEYS) <= set(meta)
    assert all(set(REQUIRED_RANK_KEYS) <= set(r) and set(REQUIRED_RNG_KEYS) <= set(r["rng"]) for r in meta["ranks"])


@pytest.mark.parametrize("component", REQUIRED)
def test_a_checkpoint_missing_a_component_fails_loudly(reference_run, tmp_path, component):
    kind, name = component.split(":")

    def remove(meta):
        if kind == "key":
            del meta[name]
        elif kind == "rank":
            del meta["ranks"][0][name]
        elif kind == "rng":
            del meta["ranks"][0]["rng"][name]

    path = damaged_copy(reference_run, tmp_path, remove, name if kind == "file" else None)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        restore(path, None, None, None, None)  # fails before touching any component


def test_the_cli_refuses_a_checkpoint_without_its_optimizer(reference_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    (out / "checkpoints" / "step-20" / "optimizer.safetensors").unlink()
    assert main(train_argv(out, RUN[1:] + ["train.steps=21"])) == 2
    err = capsys.readouterr().err
    assert "lacks optimizer.safetensors" in err and "step-20" in err


def nano_model() -> DualEncoder:
    """The architecture of the legacy fixture (see tests/assets/legacy/README.md)."""
    torch.manual_seed(0)
    return DualEncoder(VisionTransformer(PatchEmbed(8, 4, 1, 8), 8, 1, 1, 2.0), TextTransformer(32, 4, 8, 1, 1, 2.0),
                       PooledProjection(8, 8), PooledProjection(8, 8))


def test_a_format_0_checkpoint_from_the_first_release_still_resumes():
    path = LEGACY / "step-2"
    tensors, optimizer_state, meta = load_checkpoint(path)
    assert meta["format_version"] == 1 and meta["world_size"] == 1 and meta["step"] == 2
    source = build_source("shapes:n=64,seed=0")
    tokenizer = train_tokenizer([source[i].caption for i in range(64)], 64)
    loader = Loader(source, tokenizer, ImageTransform(8, 1), 4, 4)
    model, cfg = nano_model(), get_recipe("tiny")
    optimizer = build_optimizer(model, OptimConfig())
    state = restore(path, model, optimizer, loader, Replicate())

    assert state == TrainState(step=2, samples_seen=8)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tensors.items())
    restored = optimizer.state_dict()["state"]
    # every parameter has optimizer state, but the logit bias that CLIP never uses
    assert len(restored) == len(optimizer_state["state"]) == sum(1 for _ in model.parameters()) - 1
    for index, entries in optimizer_state["state"].items():
        assert all(torch.equal(restored[index][k], v) for k, v in entries.items())
    assert (loader.epoch, loader.next_batch) == (0, 2)
    expected = json.loads((LEGACY / "expected.json").read_text())["torch_rand_after_restore"]
    assert torch.rand(3).tolist() == expected  # the RNG continues where it was saved

    g = torch.Generator().manual_seed(0)  # and it trains on
    ids = torch.randint(1, 32, (4, 4), generator=g)
    batch = {"images": torch.randn(4, 1, 8, 8, generator=g), "text_ids": ids, "text_mask": ids != 0,
             "channel_ids": torch.zeros(4, 1, dtype=torch.long)}
    assert train_step(model, lambda out, b: (out.image_embeds.sum() * 0 + out.logit_scale, {}), optimizer, batch,
                      state, cfg, Replicate()) is not None
    assert state.step == 3


def test_fields_added_after_a_run_was_saved_take_their_defaults():
    from vlalign.config import RunConfig, to_dict
    from vlalign.train.resume import _with_defaults

    saved = to_dict(RunConfig())
    del saved["model"]["adapter"]  # a section a newer vlalign added
    del saved["model"]["text"]["locked"]
    saved["model"]["embed_dim"] = 64  # a real difference stays visible
    filled = _with_defaults(saved)
    assert filled["model"]["adapter"] == to_dict(RunConfig())["model"]["adapter"]
    assert filled["model"]["text"]["locked"] is False and filled["model"]["embed_dim"] == 64
