"""Mono-InternVL visual experts and VPGTrans transfer (issue 13), on tiny generative runs."""

import shutil

import pytest
import torch

from vlalign.api import load
from vlalign.config import ModelConfig, apply_overrides
from vlalign.errors import CheckpointError, ConfigError
from vlalign.eval import run_tasks
from vlalign.models.factory import build_vlm
from vlalign.models.visual_experts import visual_experts
from vlalign.models.vpg_transfer import word_converter
from vlalign.recipes import get_recipe
from vlalign.train import run_training

TINY = ["train.steps=2", "train.checkpoint_every=2", "train.log_every=1", "train.threads=1", "data.batch_size=8",
        "eval.tasks=[]", "train.seed=0"]


def _run(path, recipe, overrides):
    cfg = apply_overrides(get_recipe(recipe), TINY + overrides)
    run_training(cfg, path, progress=False)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    small = _run(root / "lm-small", "lm-pretrain", ["data.train=shapes-qa:n=30,seed=3"])
    (root / "lm-large").mkdir()
    shutil.copy(small / "tokenizer.json", root / "lm-large" / "tokenizer.json")  # one tokenizer for both LMs
    large = _run(root / "lm-large", "lm-pretrain", ["data.train=shapes-qa:n=30,seed=3", "model.vlm.decoder=lm-mini"])
    vpg = _run(root / "vpg-small", "cgvlm-stage1-gen", ["data.train=shapes:n=30,seed=0", "model.vlm.connector_width=48",
                                                        f"model.init_from=[{small}]"])
    return {"root": root, "small": small, "large": large, "vpg": vpg}


def _mono_model(seed=0):
    cfg = ModelConfig(arch="vlm")
    cfg.vision.size, cfg.vlm.decoder, cfg.vlm.visual_experts = "vit-micro", "lm-micro", True
    torch.manual_seed(seed)
    return build_vlm(cfg, image_size=32, vocab_size=50, context_length=12)


def test_visual_experts_route_image_positions_and_leave_text_only_outputs_bit_identical():
    torch.manual_seed(0)
    model = _mono_model().eval()
    ids, mask = torch.randint(3, 50, (2, 7)), torch.ones(2, 7, dtype=torch.bool)
    images = torch.randn(2, 3, 32, 32)
    before_text, before_image = model(None, ids, mask).logits, model(images, ids, mask).logits
    with torch.no_grad():
        for expert in visual_experts(model.decoder):
            expert[0].weight.add_(torch.randn_like(expert[0].weight))
    assert torch.equal(model(None, ids, mask).logits, before_text)  # text never touches an expert
    assert not torch.allclose(model(images, ids, mask).logits, before_image)  # images do
    # Routing by position is the same with and without a KV cache.
    prompt = torch.randint(3, 50, (2, 3))
    cached = model.generate(images, prompt, torch.ones_like(prompt, dtype=torch.bool), max_new_tokens=4)
    plain = model.decoder.generate(prompt, model.project_images(images)[0], 4, use_cache=False,
                                   visual_positions=model.num_image_tokens)
    assert torch.equal(cached, plain)


def test_freeze_keeps_experts_trainable_unless_named():
    model = _mono_model()
    model.freeze(["vision", "decoder"])
    assert all(p.requires_grad for e in visual_experts(model.decoder) for p in e.parameters())
    assert not any(p.requires_grad for n, p in model.decoder.named_parameters() if "visual_mlp" not in n)
    model.freeze(["visual_experts", "connector.fc1"])
    assert not any(p.requires_grad for e in visual_experts(model.decoder) for p in e.parameters())
    assert not model.connector.fc1.weight.requires_grad and model.connector.fc2.weight.requires_grad
    with pytest.raises(ValueError, match="connector.fc9"):
        model.freeze(["connector.fc9"])


def test_trained_visual_experts_keep_the_language_model_exactly(runs, tmp_path):
    mono = _run(tmp_path / "mono", "mono-visual-experts", ["data.train=shapes:n=30,seed=0",
                                                           f"model.init_from=[{runs['small']}]"])
    lm, vlm = load(runs["small"]), load(mono)
    for block, lm_block in zip(vlm.model.decoder.blocks, lm.model.decoder.blocks):
        assert torch.equal(block.mlp[0].weight, lm_block.mlp[0].weight)
    first, last = vlm.model.decoder.blocks[0], vlm.model.decoder.blocks[-1]
    assert not torch.equal(first.visual_mlp[0].weight, first.mlp[0].weight)  # started as a copy, trained
    # The last block's expert only shapes the outputs at image positions, which no loss reads: no gradient.
    assert torch.equal(last.visual_mlp[0].weight, last.mlp[0].weight)
    ids = torch.randint(3, lm.tokenizer.vocab_size, (3, 9))
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.inference_mode():
        assert torch.equal(vlm.model(None, ids, mask).logits, lm.model(None, ids, mask).logits)
    text = run_tasks(vlm, ["text-tokens"], "shapes-qa:n=5,seed=1").results[0]
    assert text == run_tasks(lm, ["text-tokens"], "shapes-qa:n=5,seed=1").results[0]
    tokens = run_tasks(vlm, ["caption-tokens"], "shapes:n=5,seed=1").results[0]
    assert 0 <= tokens["attribute_accuracy"] <= 1 and tokens["caption_loss"] > 0


def test_word_converter_recovers_an_affine_map():
    torch.manual_seed(0)
    source = torch.randn(40, 6)
    a, c = torch.randn(9, 6), torch.randn(9)
    got_a, got_c = word_converter(source, source @ a.t() + c)
    torch.testing.assert_close(got_a, a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_c, c, atol=1e-4, rtol=1e-4)


def test_vpg_warmup_inherits_the_vpg_and_composes_the_projector(runs, tmp_path):
    warm = apply_overrides(get_recipe("vpgtrans-warmup"), TINY + [
        "data.train=shapes:n=30,seed=0", "model.vlm.connector_width=48", "train.steps=1",
        f"model.init_from=[{runs['large']}]", f"model.vlm.inherit_vpg={runs['vpg']}", "optim.lr=0"])
    run_training(warm, tmp_path / "warm", progress=False)  # lr 0: the weights stay as initialised
    new, old, large = load(tmp_path / "warm").model, load(runs["vpg"]).model, load(runs["large"]).model
    for name, tensor in old.state_dict().items():
        if name.startswith(("vision.", "connector.fc1.")):
            assert torch.equal(new.state_dict()[name], tensor), name
    assert torch.equal(new.decoder.embed_tokens.weight, large.decoder.embed_tokens.weight)
    # The projector is the old one read through the word converter.
    converter, shift = word_converter(old.decoder.embed_tokens.weight, large.decoder.embed_tokens.weight)
    hidden = torch.randn(4, 48)
    with torch.no_grad():
        torch.testing.assert_close(new.connector.fc2(hidden), old.connector.fc2(hidden) @ converter.t() + shift,
                                   atol=1e-4, rtol=1e-4)


def test_vpg_from_a_run_with_another_tokenizer_is_refused(runs, tmp_path):
    other = _run(tmp_path / "lm-other", "lm-pretrain", ["data.train=shapes-qa:n=12,seed=9", "model.vlm.decoder=lm-mini"])
    cfg = apply_overrides(get_recipe("vpgtrans-warmup"), TINY + [
        "data.train=shapes:n=30,seed=0", "model.vlm.connector_width=48", f"model.init_from=[{other}]",
        f"model.vlm.inherit_vpg={runs['vpg']}"])
    with pytest.raises(CheckpointError, match="tokenizer"):
        run_training(cfg, tmp_path / "warm", progress=False)


@pytest.mark.parametrize("overrides, message", [
    (["model.vlm.projector_init=word-converter"], "inherit_vpg"),
    (["model.vlm.freeze=[conector]"], "freezable"),
    (["model.vlm.connector=linear", "model.vlm.connector_width=32"], "connector=mlp"),
])
def test_bad_transfer_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_recipe("cgvlm-stage1-gen"), overrides)


def test_the_vpgtrans_recipes_chain_from_the_recipes_that_make_their_runs(tmp_path, monkeypatch, capsys):
    from vlalign.cli import main

    monkeypatch.chdir(tmp_path)  # the recipes read and write runs/NAME

    def train(recipe: str, data: str) -> int:
        return main(["train", "--recipe", recipe, "--quiet", "--no-eval", "--set", f"data.train={data}",
                     *(arg for item in TINY for arg in ("--set", item))])

    assert train("vpgtrans-warmup", "shapes:n=30,seed=0") == 2
    assert "`vlalign train --recipe lm-pretrain-mini`" in capsys.readouterr().err
    for recipe, data in (("lm-pretrain", "shapes-qa:n=30,seed=3"), ("cgvlm-vision", "shapes:n=30,seed=0"),
                         ("vpg-small", "shapes:n=30,seed=0"), ("lm-pretrain-mini", "shapes-qa:n=30,seed=3")):
        assert train(recipe, data) == 0, capsys.readouterr().err
    tokenizer = (tmp_path / "runs" / "lm-pretrain" / "tokenizer.json").read_text()
    assert (tmp_path / "runs" / "lm-pretrain-mini" / "tokenizer.json").read_text() == tokenizer
    assert train("vpgtrans-warmup", "shapes:n=30,seed=0") == 0, capsys.readouterr().err
    assert load(tmp_path / "runs" / "vpgtrans-warmup").model.decoder.embed_tokens.weight.shape == \
        load(tmp_path / "runs" / "lm-pretrain-mini").model.decoder.embed_tokens.weight.shape


def test_every_run_a_recipe_starts_from_is_made_by_a_recipe():
    from vlalign.recipes import RECIPES, stage_paths

    for name in RECIPES:
        for key, path in stage_paths(get_recipe(name)):
            assert path.startswith("runs/") and path.removeprefix("runs/") in RECIPES, (name, key, path)
