import json

import pytest
import torch
from safetensors.torch import load_file

from vlalign.api import load
from vlalign.cli import main
from vlalign.data.specs import build_source
from vlalign.errors import CheckpointError
from vlalign.export import export_hf, load_vlalign_export
from vlalign.recipes import get_recipe
from vlalign.train import run_training


def _inputs(aligner):
    source = build_source("shapes:n=6,seed=9")
    return [source[i].image for i in range(6)], [source[i].caption for i in range(6)]


def test_hf_export_round_trip(trained_tiny_run, tmp_path):
    """The tiny recipe has no ln_pre, which CLIPModel always applies: it exports in vlalign's own layout, with
    no config.json that transformers would take for one of its models."""
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(trained_tiny_run), "--format", "hf", "--out", str(out)]) == 0
    for name in ("vlalign_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json", "preprocess.json"):
        assert (out / name).is_file()
    assert not (out / "config.json").exists()
    config = json.loads((out / "vlalign_config.json").read_text())
    assert config["projection_dim"] == 32 and config["architectures"] == ["VlalignDualEncoder"]
    original, exported = load(trained_tiny_run), load(out)
    images, captions = _inputs(original)
    torch.testing.assert_close(exported.encode_image(images), original.encode_image(images))
    torch.testing.assert_close(exported.encode_text(captions), original.encode_text(captions))


def test_lora_run_exports_merged_weights(tmp_path):
    cfg = get_recipe("tiny")
    cfg.data.train = "shapes:n=64,seed=0"
    cfg.model.adapter.kind, cfg.model.adapter.rank = "lora", 4
    cfg.train.steps, cfg.train.checkpoint_every = 2, 2
    run_training(cfg, tmp_path / "run", progress=False)
    original = load(tmp_path / "run")
    with torch.no_grad():  # LoRA's B starts at zero; make the update non-trivial so merging matters
        for name, p in original.model.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.1)
    export_hf(original, tmp_path / "hf")
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert not any("lora" in k for k in weights)
    exported = load_vlalign_export(tmp_path / "hf")
    assert exported.config.model.adapter.kind == "none"
    images, captions = _inputs(original)
    torch.testing.assert_close(exported.encode_image(images), original.encode_image(images), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(exported.encode_text(captions), original.encode_text(captions), atol=1e-5, rtol=1e-5)


def test_torchscript_towers_match_eager(trained_tiny_run, tmp_path):
    assert main(["export", "--checkpoint", str(trained_tiny_run), "--format", "torchscript",
                 "--out", str(tmp_path)]) == 0
    aligner = load(trained_tiny_run)
    images, captions = _inputs(aligner)
    pixels = aligner.preprocess(images)
    ids, mask = aligner.tokenizer(captions, aligner.config.data.context_length)
    image_encoder = torch.jit.load(str(tmp_path / "image_encoder.pt"))
    text_encoder = torch.jit.load(str(tmp_path / "text_encoder.pt"))
    torch.testing.assert_close(image_encoder(pixels), aligner.encode_image(images), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text_encoder(ids, mask), aligner.encode_text(captions), atol=1e-5, rtol=1e-5)


def test_not_an_export_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a vlalign export"):
        load_vlalign_export(tmp_path)
