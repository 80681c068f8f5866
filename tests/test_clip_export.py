"""CLIP-architecture runs out as real ``CLIPModel`` directories, both ways round: a Hugging Face CLIP through
vlalign and back is the same checkpoint, and a vlalign-trained CLIP-architecture run gives, through
``CLIPModel`` and ``AutoProcessor``, the embeddings vlalign gives (to 1e-5: fp32, see test_hf_clip)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clip_fixtures import CAPTIONS, clip_model, images

from vlalign.api import load
from vlalign.cli import main
from vlalign.export import export_hf

transformers = pytest.importorskip("transformers")

TOL = dict(atol=1e-5, rtol=1e-5)


def test_hf_clip_through_vlalign_exports_the_same_checkpoint(tmp_path):
    original = clip_model(tmp_path / "clip")
    assert export_hf(load(f"hf-clip:{tmp_path / 'clip'}"), tmp_path / "out") == "clip"
    exported = transformers.CLIPModel.from_pretrained(str(tmp_path / "out"))
    assert exported.config.text_config.hidden_act == "quick_gelu"
    theirs = exported.state_dict()
    assert set(theirs) == set(original.state_dict())
    for name, tensor in original.state_dict().items():  # renames, splits and reshapes only: bit for bit
        torch.testing.assert_close(theirs[name], tensor, atol=0, rtol=0, msg=name)
    before = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "clip"))(CAPTIONS)["input_ids"]
    after = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))(CAPTIONS)["input_ids"]
    assert after == before


@pytest.fixture(scope="module")
def clip_architecture_run(tmp_path_factory):
    """The tiny recipe with CLIP's ln_pre (its own BPE vocabulary, GELU, a patch bias), trained 3 steps."""
    out = tmp_path_factory.mktemp("clip-arch") / "run"
    settings = ["data.train=shapes:n=64,seed=0", "data.batch_size=16", "train.steps=3", "train.checkpoint_every=3",
                "train.precision=fp32", "model.vision.ln_pre=true"]
    assert main(["train", "--recipe", "tiny", "--out", str(out), "--no-eval", "--quiet"]
                + [a for setting in settings for a in ("--set", setting)]) == 0
    return out


def test_a_vlalign_clip_run_exports_a_clip_model_with_its_processor(clip_architecture_run, tmp_path):
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(clip_architecture_run), "--format", "hf", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "clip"
    run = load(clip_architecture_run)
    model = transformers.CLIPModel.from_pretrained(str(out)).eval()
    processor = transformers.AutoProcessor.from_pretrained(str(out))
    assert isinstance(processor, transformers.CLIPProcessor)
    arrays = images(4, run.config.data.image_size)
    pictures = [Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0))) for a in arrays]
    inputs = processor(text=CAPTIONS[:4], images=pictures, padding=True, return_tensors="pt")
    ids, _ = run.tokenizer(CAPTIONS[:4], run.config.data.context_length)  # right-padded with [PAD] = 0
    torch.testing.assert_close(inputs["input_ids"], ids[:, : inputs["input_ids"].shape[1]], atol=0, rtol=0)
    torch.testing.assert_close(inputs["pixel_values"], run.preprocess(arrays), **TOL)
    with torch.no_grad():
        out_hf = model(**inputs)
    torch.testing.assert_close(out_hf.image_embeds, run.encode_image(arrays), **TOL)
    torch.testing.assert_close(out_hf.text_embeds, run.encode_text(CAPTIONS[:4]), **TOL)
    back = load(out)  # vlalign reads its export back as a CLIP checkpoint
    torch.testing.assert_close(back.encode_image(arrays), run.encode_image(arrays), **TOL)
    torch.testing.assert_close(back.encode_text(CAPTIONS), run.encode_text(CAPTIONS), **TOL)


def test_another_architecture_is_refused_by_auto_config_not_mistaken(trained_tiny_run, tmp_path):
    assert export_hf(load(trained_tiny_run), tmp_path / "out") == "vlalign"
    with pytest.raises((OSError, ValueError)):
        transformers.AutoConfig.from_pretrained(str(tmp_path / "out"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    ids, _ = load(trained_tiny_run).tokenizer(["a red circle"], 32)
    assert tokenizer("a red circle")["input_ids"] == ids[0][ids[0] != 0].tolist()
