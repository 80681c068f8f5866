"""open_clip state dicts into vlalign. The state dict is written here from a random Hugging Face ``CLIPModel``
under open_clip's names (OpenAI's layout, which open_clip keeps: fused ``in_proj`` rows q, k, v, projections
applied as ``x @ proj``), so the converted model must give the ``CLIPModel``'s embeddings (to 1e-5, as in
test_hf_clip)."""

import pytest
import torch
from safetensors.torch import save_file

from clip_fixtures import CAPTIONS, clip_model, hf_embeddings, images

from vlalign.api import load
from vlalign.config import RunConfig
from vlalign.errors import CheckpointError, ConfigError
from vlalign.models.clip_arch import adopt
from vlalign.models.open_clip_names import architecture

pytest.importorskip("transformers")

TOL = dict(atol=1e-5, rtol=1e-5)
OPENAI_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
OPENAI_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]


def open_clip_state(hf: dict) -> dict:
    """A ``CLIPModel`` state dict under open_clip's names."""
    out = {}
    for hf_tower, oc_tower in (("vision_model.encoder", "visual.transformer"), ("text_model.encoder", "transformer")):
        layers = {int(k.split(".")[3]) for k in hf if k.startswith(hf_tower + ".layers.")}
        for i in sorted(layers):
            a, b = f"{hf_tower}.layers.{i}", f"{oc_tower}.resblocks.{i}"
            for p in ("weight", "bias"):
                out[f"{b}.attn.in_proj_{p}"] = torch.cat([hf[f"{a}.self_attn.{x}_proj.{p}"] for x in "qkv"])
                out[f"{b}.attn.out_proj.{p}"] = hf[f"{a}.self_attn.out_proj.{p}"]
                out[f"{b}.ln_1.{p}"], out[f"{b}.ln_2.{p}"] = hf[f"{a}.layer_norm1.{p}"], hf[f"{a}.layer_norm2.{p}"]
                out[f"{b}.mlp.c_fc.{p}"], out[f"{b}.mlp.c_proj.{p}"] = hf[f"{a}.mlp.fc1.{p}"], hf[f"{a}.mlp.fc2.{p}"]
    for p in ("weight", "bias"):
        out[f"visual.ln_pre.{p}"] = hf[f"vision_model.pre_layrnorm.{p}"]
        out[f"visual.ln_post.{p}"] = hf[f"vision_model.post_layernorm.{p}"]
        out[f"ln_final.{p}"] = hf[f"text_model.final_layer_norm.{p}"]
    e = "vision_model.embeddings"
    out["visual.conv1.weight"] = hf[f"{e}.patch_embedding.weight"]
    out["visual.class_embedding"] = hf[f"{e}.class_embedding"]
    out["visual.positional_embedding"] = hf[f"{e}.position_embedding.weight"]
    out["visual.proj"] = hf["visual_projection.weight"].T
    out["token_embedding.weight"] = hf["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = hf["text_model.embeddings.position_embedding.weight"]
    out["text_projection"] = hf["text_projection.weight"].T
    out["logit_scale"] = hf["logit_scale"]
    out["attn_mask"] = torch.full((16, 16), float("-inf")).triu(1)  # a buffer older open_clip versions saved
    return {k: v.clone().contiguous() for k, v in out.items()}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_open_clip_state_dict_converts_to_identical_embeddings(tmp_path, suffix):
    model = clip_model(tmp_path / "clip", "gelu", "gelu")
    state = open_clip_state(model.state_dict())
    path = tmp_path / f"open_clip{suffix}"
    if suffix == ".pt":  # a training checkpoint: the weights under state_dict, with DDP's module. prefix
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        save_file(state, str(path))
    aligner = load(f"open-clip:{path},activation=gelu,tokenizer={tmp_path / 'clip'},vision_heads=2,text_heads=4")
    arrays = images(5, 32)
    pixels = torch.stack([(torch.from_numpy(a).float() / 255 - OPENAI_MEAN) / OPENAI_STD for a in arrays])
    image_ref, text_ref = hf_embeddings(model, tmp_path / "clip", pixels, CAPTIONS)
    torch.testing.assert_close(aligner.encode_image(arrays), image_ref, **TOL)
    torch.testing.assert_close(aligner.encode_text(CAPTIONS), text_ref, **TOL)


def test_vit_b_32_shapes_give_the_vit_b_towers():
    """ViT-B/32 as open_clip saves it (shapes only): 64-wide heads, the registry's ViT-B and CLIP text rows."""
    meta = lambda *shape: torch.empty(shape, device="meta")  # noqa: E731
    state = {"visual.conv1.weight": meta(768, 3, 32, 32), "visual.positional_embedding": meta(50, 768),
             "visual.proj": meta(768, 512), "token_embedding.weight": meta(49408, 512),
             "positional_embedding": meta(77, 512), "text_projection": meta(512, 512), "logit_scale": meta()}
    for i in range(12):
        state[f"visual.transformer.resblocks.{i}.mlp.c_fc.weight"] = meta(3072, 768)
        state[f"transformer.resblocks.{i}.mlp.c_fc.weight"] = meta(2048, 512)
    arch = architecture(state, "quick_gelu")
    assert (arch.image_size, arch.patch_size, arch.embed_dim, arch.context_length) == (224, 32, 512, 77)
    assert (arch.vision.heads, arch.text.heads) == (12, 8)
    cfg = adopt(RunConfig(), arch, 49409)
    assert (cfg.model.vision.size, cfg.model.text.size) == ("vit-b", "text-b")


def test_open_clip_spec_names_what_the_state_dict_does_not_record(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="name the MLP activation and the tokenizer"):
        load(f"open-clip:{tmp_path / 'w.pt'}")


def test_extra_weights_are_refused_not_dropped(tmp_path):
    model = clip_model(tmp_path / "clip")
    state = open_clip_state(model.state_dict()) | {"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(64)}
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="ls_1.gamma"):
        load(f"open-clip:{tmp_path / 'w.pt'},activation=quick_gelu,tokenizer={tmp_path / 'clip'},vision_heads=2,"
             "text_heads=4")
