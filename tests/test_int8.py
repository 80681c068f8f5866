import pytest
import torch
import torch.nn.functional as F
from ci_skips import machine_skipif
from torch import nn

import vlalign
from vlalign.data.specs import build_source
from vlalign.models.int8 import DynamicInt8Linear, int8_supported, quantize_linears

pytestmark = machine_skipif(not int8_supported(), "this torch has no fbgemm int8 kernels")


def test_an_int8_linear_is_close_to_the_fp32_one_for_any_leading_shape():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(3, 7, 64)  # [B, T, in]
    expected = linear(x)
    got = DynamicInt8Linear(linear)(x)
    assert got.shape == (3, 7, 48)
    # Per-channel int8 weights and 7-bit activations: errors of about 1% of the output's scale.
    assert (got - expected).abs().max() < 0.03 * expected.abs().max()
    assert not torch.equal(got, expected)  # it really ran in int8


def test_quantize_linears_swaps_exactly_the_linear_layers():
    block = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 4, bias=False)))
    assert quantize_linears(block) == 2
    assert isinstance(block[0], DynamicInt8Linear) and isinstance(block[2][1], DynamicInt8Linear)
    assert isinstance(block[2][0], nn.LayerNorm)
    assert block(torch.randn(2, 8)).shape == (2, 4)


def test_an_int8_aligner_gives_embeddings_close_to_fp32_ones(trained_tiny_run):
    samples = list(build_source("shapes:n=32,seed=5"))
    images, captions = [s.image for s in samples], [s.caption for s in samples]
    fp32, int8 = vlalign.load(trained_tiny_run), vlalign.load(trained_tiny_run, int8=True)
    assert any(isinstance(m, DynamicInt8Linear) for m in int8.model.vision.modules())
    assert not any(isinstance(m, DynamicInt8Linear) for m in int8.model.image_head.modules())  # heads stay fp32
    for encode in ("encode_image", "encode_text"):
        inputs = images if encode == "encode_image" else captions
        expected, got = getattr(fp32, encode)(inputs), getattr(int8, encode)(inputs)
        cosine = F.cosine_similarity(got, expected)  # [N]
        assert cosine.min() > 0.99, (encode, cosine.min())
        assert not torch.equal(got, expected)



def test_embed_int8_writes_int8_embeddings_and_never_mixes_them_with_fp32_chunks(trained_tiny_run, tmp_path):
    from vlalign.cli import main
    from vlalign.embed import load_embeddings

    spec = "shapes:n=12,seed=5"
    argv = ["embed", "--checkpoint", str(trained_tiny_run), "--data", spec, "--what", "image", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "q.safetensors"), "--int8"]) == 0
    images = [s.image for s in build_source(spec)]
    got = load_embeddings(tmp_path / "q.safetensors").image
    torch.testing.assert_close(got, vlalign.load(trained_tiny_run, int8=True).encode_image(images), atol=1e-5, rtol=0)
    assert main([*argv, "--out", str(tmp_path / "f.safetensors")]) == 0  # fp32 chunks in f.safetensors.parts ...
    assert main([*argv, "--out", str(tmp_path / "f.safetensors"), "--int8"]) != 0  # ... an int8 rerun is refused


@pytest.mark.parametrize("kind", ["lora", "bottleneck"])
def test_an_adapted_model_quantizes_with_its_adapters(kind):
    pytest.importorskip("peft", reason="pip install peft")
    from vlalign.api import Aligner
    from vlalign.config import apply_overrides
    from vlalign.data.tokenizer import train_tokenizer
    from vlalign.data.transforms import ImageTransform
    from vlalign.models import build_model
    from vlalign.recipes import get_recipe

    cfg = apply_overrides(get_recipe("tiny"), [f"model.adapter.kind={kind}", "model.adapter.towers=vision,text"])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.image_size, 300, cfg.data.context_length).eval()
    for name, p in model.named_parameters():  # adapters start as the identity; give them an effect to keep
        if "lora_B" in name or ".up." in name:
            nn.init.normal_(p, std=0.05)
    tokenizer = train_tokenizer(["a small red circle", "a large blue star"] * 10, 300)
    aligner = Aligner(model, tokenizer, ImageTransform(cfg.data.image_size, 3), cfg, run_dir=None, step=0)
    pixels = torch.randn(4, 3, cfg.data.image_size, cfg.data.image_size, generator=torch.Generator().manual_seed(0))
    expected = aligner.encode_image(pixels)
    got = aligner.quantize_int8().encode_image(pixels)
    assert F.cosine_similarity(got, expected).min() > 0.99
