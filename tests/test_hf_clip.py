"""Hugging Face CLIP checkpoints into vlalign: random ``CLIPModel``s built offline, converted, and compared
embedding for embedding (fp32 through differently ordered but identical arithmetic: differences of a few
ulps of values of order 1, so 1e-5)."""

import json
from pathlib import Path

import pytest
import torch

from clip_fixtures import CAPTIONS, clip_model, hf_embeddings, images

from vlalign.api import load
from vlalign.cli import main
from vlalign.errors import CheckpointError
from vlalign.models.adapters import base_names

pytest.importorskip("transformers")

TOL = dict(atol=1e-5, rtol=1e-5)
MEAN, STD = torch.tensor([0.4, 0.5, 0.6])[:, None, None], torch.tensor([0.2, 0.25, 0.3])[:, None, None]


def _pixels(arrays) -> torch.Tensor:
    """CLIPImageProcessor's normalisation of images already at the model's size: x / 255, then (x - mean) / std."""
    return torch.stack([(torch.from_numpy(a).float() / 255 - MEAN) / STD for a in arrays])


@pytest.mark.parametrize("acts", [("quick_gelu", "quick_gelu"), ("gelu", "quick_gelu")])
def test_hf_clip_converts_to_identical_embeddings(tmp_path, acts):
    model = clip_model(tmp_path / "clip", *acts)
    aligner = load(f"hf-clip:{tmp_path / 'clip'}")
    arrays = images(5, 32)
    image_ref, text_ref = hf_embeddings(model, tmp_path / "clip", _pixels(arrays), CAPTIONS)
    torch.testing.assert_close(aligner.encode_image(arrays), image_ref, **TOL)
    torch.testing.assert_close(aligner.encode_text(CAPTIONS), text_ref, **TOL)
    assert aligner.model.logit_scale.item() == pytest.approx(3.1)
    v = aligner.config.model.vision
    assert (v.ln_pre, v.patch_bias, v.activation, aligner.config.model.text.activation) == (True, False, *acts)


def test_a_plain_clip_directory_loads_without_the_prefix(tmp_path):
    clip_model(tmp_path / "clip")
    by_spec, by_path = load(f"hf-clip:{tmp_path / 'clip'}"), load(tmp_path / "clip")
    torch.testing.assert_close(by_path.encode_text(CAPTIONS), by_spec.encode_text(CAPTIONS), atol=0, rtol=0)


def test_not_a_clip_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a Hugging Face CLIP directory"):
        load(f"hf-clip:{tmp_path}")


def _fine_tune(tmp_path, clip_dir, lr: float, *overrides: str) -> Path:
    """``vlalign train --set model.init_from=hf-clip:DIR`` for two steps of the tiny recipe."""
    out = tmp_path / "run"
    settings = ["data.train=shapes:n=32,seed=0", "data.batch_size=8", "train.steps=2", "train.checkpoint_every=2",
                "train.precision=fp32", f"optim.lr={lr}", "optim.warmup_steps=0", f"model.init_from=hf-clip:{clip_dir}",
                *overrides]
    argv = ["train", "--recipe", "tiny", "--out", str(out), "--no-eval", "--quiet"]
    assert main(argv + [arg for setting in settings for arg in ("--set", setting)]) == 0
    return out


def test_a_run_starts_from_the_clip_with_its_tokenizer_and_normalisation(tmp_path):
    clip_model(tmp_path / "clip")
    converted = load(f"hf-clip:{tmp_path / 'clip'}")
    run = load(_fine_tune(tmp_path, tmp_path / "clip", 0.0))  # lr 0: the weights stay the converted ones
    assert run.config.model.vision.size == "w64-d2-h2-m96" and run.config.data.image_size == 32
    assert run.tokenizer.encode("a red circle") == converted.tokenizer.encode("a red circle")
    assert run.transform.mean == pytest.approx([102.0, 127.5, 153.0])  # 255 x the checkpoint's image_mean
    arrays = images(4, 32)
    torch.testing.assert_close(run.encode_image(arrays), converted.encode_image(arrays), atol=0, rtol=0)
    torch.testing.assert_close(run.encode_text(CAPTIONS), converted.encode_text(CAPTIONS), atol=0, rtol=0)
    assert run.model.logit_scale.item() == converted.model.logit_scale.item()


def test_lora_fine_tunes_the_converted_towers(tmp_path):
    clip_model(tmp_path / "clip")
    converted = load(f"hf-clip:{tmp_path / 'clip'}").model.state_dict()
    run = load(_fine_tune(tmp_path, tmp_path / "clip", 1e-2, "model.adapter.kind=lora", "model.adapter.rank=4",
                          "model.adapter.targets=[attn.qkv, attn.proj, mlp.fc1]"))
    state = run.model.state_dict()
    lora_b = [name for name in state if ".lora_B." in name]
    assert lora_b and all(state[name].abs().max() > 0 for name in lora_b)  # B starts at 0: every adapter trained
    plain = base_names(run.model)  # adapted name -> the converted model's name
    towers = [name for name in state if plain[name] in converted and name.startswith(("vision.", "text."))]
    assert any(".base_layer." in name for name in towers)
    for name in towers:  # the converted weights stay frozen under the adapters
        torch.testing.assert_close(state[name], converted[plain[name]], atol=0, rtol=0)


def test_clip_options_leave_the_default_model_as_it_was():
    from vlalign.config import RunConfig
    from vlalign.models import build_model
    from vlalign.models.registry import vision_size

    names = set(build_model(RunConfig().model, 64, 1024, 32).state_dict())
    assert "vision.patch_embed.proj.bias" in names and not any("ln_pre" in n for n in names)
    assert vision_size("w64-d2-h2-m96").mlp_ratio * 64 == 96
    assert vision_size("vit-b") == vision_size("w768-d12-h12-m3072")


def test_eval_compares_a_run_and_a_clip_checkpoint_in_one_table(trained_tiny_run, tmp_path, capsys):
    clip_model(tmp_path / "clip")
    argv = ["eval", "--checkpoint", str(trained_tiny_run), "--model", f"hf-clip:{tmp_path / 'clip'}",
            "--task", "retrieval", "--task", "compositional"]
    assert main(argv) == 0
    out = capsys.readouterr()
    rows = json.loads(out.out)
    by_model = {(r["model"], r["task"]): r for r in rows}
    clip = f"hf-clip:{tmp_path / 'clip'}"
    for name in (clip, str(trained_tiny_run)):
        assert 0 <= by_model[(name, "retrieval")]["i2t_R@1"] <= 1
        # neither trained with held-out combinations: the task is skipped, with the reason, not the call ended
        assert "holdout" in by_model[(name, "compositional")]["skipped"]
    assert clip in out.err and str(trained_tiny_run) in out.err  # one table, both models
    assert not (tmp_path / "clip" / "eval.json").exists()  # a checkpoint directory is not written to
