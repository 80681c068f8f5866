"""CG-VLM: the patch-token contrastive loss, the generative objectives, freezing, stages and chat."""

import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image, ImageDraw

from vlalign.checkpoint import save_checkpoint
from vlalign.cli import main
from vlalign.config import ObjectiveConfig, RunConfig, apply_overrides, to_dict
from vlalign.data.generative import GenerativeExample, collate_generative, encode_examples, encode_prompts
from vlalign.data.shapes import Scene, ShapeObject, ShapesConfig, ShapesWorld
from vlalign.data.shapes_qa import ShapesQA
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import CheckpointError, ConfigError, DataError
from vlalign.eval.generative import attribute_scores, first_sentence
from vlalign.models import build_model
from vlalign.models.transfer import load_matching_weights
from vlalign.objectives import OBJECTIVES, build_objective
from vlalign.objectives.caption import next_token_targets
from vlalign.objectives.cgvlm import image_sentence_similarity, patch_token_contrastive_loss
from vlalign.train.distributed import build_strategy
from vlalign.train.optim import build_optimizer
from vlalign.train.step import TrainState, train_step

GENERATIVE = ("generative", "cgvlm")


@pytest.fixture(scope="module")
def world():
    return ShapesQA(ShapesWorld(12, seed=0, cfg=ShapesConfig(image_size=32)))


@pytest.fixture(scope="module")
def tokenizer(world):
    return train_tokenizer(world.texts(), vocab_size=512)


def vlm_config(arch="vlm", freeze=("vision", "decoder")) -> RunConfig:
    cfg = RunConfig()
    cfg.model.arch, cfg.objective.name = arch, "generative"
    cfg.model.vision.size, cfg.model.vlm.decoder = "vit-micro", "lm-micro"
    cfg.model.vlm.freeze = list(freeze)
    cfg.data.image_size, cfg.data.context_length = 32, 40
    return cfg


def tiny_vlm(tokenizer, arch="vlm"):
    torch.manual_seed(0)
    cfg = vlm_config(arch)
    return build_model(cfg.model, cfg.data.image_size, tokenizer.vocab_size, cfg.data.context_length)


def qa_batch(world, tokenizer, n=6, with_image=True, indices=None):
    transform = ImageTransform(32, 3)
    indices = list(range(0, 3 * n, 3)) if indices is None else indices
    return collate_generative(world, indices, tokenizer, 40, transform, with_image)


# --------------------------------------------------------------------------------------------
# The patch-token contrastive loss (METHODS.md §3.3)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_image_sentence_similarity_equals_explicit_double_loop(pool):
    torch.manual_seed(0)
    B, P, L, D = 3, 5, 7, 8
    patches, embeds = torch.randn(B, P, D), torch.randn(B, L, D)
    token_mask = torch.rand(B, L) > 0.4
    token_mask[:, 0] = True
    patch_mask = torch.ones(B, P, dtype=torch.bool)
    patch_mask[1, 3:] = False  # e.g. a ChannelViT image with fewer channels
    sim = image_sentence_similarity(patches, patch_mask, embeds, token_mask, pool)
    for i in range(B):
        real = patches[i, patch_mask[i]]
        pooled = real.mean(0) if pool == "mean" else real.max(0).values
        for j in range(B):
            cosines = [F.cosine_similarity(pooled, embeds[j, l], dim=0) for l in range(L) if token_mask[j, l]]
            assert sim[i, j].item() == pytest.approx(torch.stack(cosines).mean().item(), abs=1e-5)


def test_contrastive_loss_is_symmetric_infonce_over_the_similarities():
    torch.manual_seed(1)
    patches, embeds = torch.randn(4, 3, 8), torch.randn(4, 6, 8)
    mask = torch.ones(4, 6, dtype=torch.bool)
    scale = torch.tensor(10.0)
    sim = image_sentence_similarity(patches, None, embeds, mask)
    rows = -torch.stack([torch.log_softmax(scale * sim[i], 0)[i] for i in range(4)]).mean()
    cols = -torch.stack([torch.log_softmax(scale * sim[:, j], 0)[j] for j in range(4)]).mean()
    loss = patch_token_contrastive_loss(patches, None, embeds, mask, scale)
    assert loss.item() == pytest.approx(0.5 * (rows + cols).item(), abs=1e-5)


# --------------------------------------------------------------------------------------------
# Objectives on the model


def test_lambda_zero_is_captioning_only_and_lambda_one_is_not(world, tokenizer):
    batch = qa_batch(world, tokenizer)
    grads = {}
    for name, weight in (("generative", 1.0), ("cgvlm", 0.0), ("cgvlm", 1.0)):
        model = tiny_vlm(tokenizer)
        loss, _ = build_objective(ObjectiveConfig(name=name, contrastive_weight=weight))(
            model(batch["images"], batch["text_ids"], batch["text_mask"]), batch)
        loss.backward()
        grads[name, weight] = (loss.item(), model.connector.fc1.weight.grad.clone())
    (gen_loss, gen_grad), (zero_loss, zero_grad), (one_loss, one_grad) = grads.values()
    assert zero_loss == pytest.approx(gen_loss, abs=1e-6) and torch.allclose(zero_grad, gen_grad, atol=1e-7)
    assert one_loss > gen_loss and not torch.allclose(one_grad, gen_grad, atol=1e-5)


def test_generative_loss_counts_answer_tokens_only_never_prefix_prompt_or_padding(world, tokenizer):
    batch = qa_batch(world, tokenizer)
    model = tiny_vlm(tokenizer)
    out = model(batch["images"], batch["text_ids"], batch["text_mask"])
    loss, _ = build_objective(ObjectiveConfig(name="generative"))(out, batch)
    log_probs = out.logits.log_softmax(-1)
    terms = []
    for b, target in enumerate(batch["targets"]):
        ids = batch["text_ids"][b].tolist()
        answer = tokenizer.encode(target, special_tokens=False) + [tokenizer.eos_id]
        start = ids.index(tokenizer.eos_id) - len(answer) + 1  # the answer ends at the EOS
        for l in range(start, start + len(answer)):
            terms.append(-log_probs[b, out.prefix_len + l - 1, ids[l]])
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-5)
    # Whatever sits in padded positions changes nothing.
    noisy = batch["text_ids"].masked_fill(~batch["text_mask"], 7)
    again = build_objective(ObjectiveConfig(name="generative"))(
        model(batch["images"], noisy, batch["text_mask"]), batch | {"text_ids": noisy})[0]
    assert again.item() == pytest.approx(loss.item(), abs=1e-6)


def test_answer_share_splits_the_loss_between_a_documents_answer_and_the_rest(world, tokenizer):
    batch = qa_batch(world, tokenizer, with_image=False)
    for b, target in enumerate(batch["targets"]):  # the answer mask: the answer's tokens and the EOS, at the end
        ids = batch["text_ids"][b][batch["answer_mask"][b]].tolist()
        assert ids == tokenizer.encode(world[3 * b].meta["answer"], special_tokens=False) + [tokenizer.eos_id]
        assert (batch["answer_mask"][b] <= batch["target_mask"][b]).all()
    model = tiny_vlm(tokenizer, arch="lm")
    out = model(None, batch["text_ids"], batch["text_mask"])
    targets, answer = next_token_targets(batch["text_ids"], batch["answer_mask"], out.prefix_len)
    _, whole = next_token_targets(batch["text_ids"], batch["target_mask"], out.prefix_len)
    nll = F.cross_entropy(out.logits.transpose(1, 2), targets, reduction="none")  # [B, P+L]
    answer_mean, rest_mean = nll[answer].mean(), nll[whole & ~answer].mean()
    for share in (0.0, 0.3, 1.0):
        loss, metrics = build_objective(ObjectiveConfig(name="generative", answer_share=share))(out, batch)
        expected = nll[whole].mean() if share == 0 else share * answer_mean + (1 - share) * rest_mean
        assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
        assert metrics["loss/answer"] == pytest.approx(answer_mean.item(), abs=1e-5)
    # A stage-2 target is all answer: every share gives the plain mean.
    image_batch = qa_batch(world, tokenizer)
    assert (image_batch["answer_mask"] == image_batch["target_mask"]).all()


@pytest.mark.parametrize("name", GENERATIVE)
def test_every_generative_objective_is_registered_and_trains_the_connector(name, world, tokenizer):
    assert name in OBJECTIVES
    batch = qa_batch(world, tokenizer)
    model = tiny_vlm(tokenizer)
    loss, metrics = build_objective(ObjectiveConfig(name=name))(
        model(batch["images"], batch["text_ids"], batch["text_mask"]), batch)
    loss.backward()
    assert torch.isfinite(loss) and "loss/gen" in metrics
    assert all(p.grad is not None for p in model.connector.parameters())
    assert (model.logit_scale.grad is not None) == (name == "cgvlm")


def test_frozen_modules_stay_fixed_across_a_step_while_the_connector_learns(world, tokenizer):
    cfg = vlm_config()
    cfg.objective.name = "cgvlm"
    cfg.optim.warmup_steps = 1
    model = tiny_vlm(tokenizer)
    model.freeze(cfg.model.vlm.freeze)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(model, build_objective(cfg.objective), build_optimizer(model, cfg.optim), qa_batch(world, tokenizer),
               TrainState(), cfg, build_strategy("replicate"))
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"connector", "logit_scale"}


@pytest.mark.parametrize("patch_embed", ["standard", "channel"])
def test_any_registered_patch_embedding_feeds_the_prefix(patch_embed, world, tokenizer):
    cfg = vlm_config()
    cfg.model.vision.patch_embed = patch_embed
    torch.manual_seed(0)
    model = build_model(cfg.model, 32, tokenizer.vocab_size, 40)
    batch = qa_batch(world, tokenizer, n=2)
    out = model(batch["images"], batch["text_ids"], batch["text_mask"], batch["channel_ids"])
    tokens = 16 * (3 if patch_embed == "channel" else 1)  # ChannelViT: one token per channel and patch
    assert out.prefix_len == tokens and out.image_tokens.shape == (2, tokens, model.decoder.cfg.width)
    assert torch.isfinite(out.logits).all()


def test_text_only_language_model_reads_text_at_the_positions_images_will_take(world, tokenizer):
    lm = tiny_vlm(tokenizer, arch="lm")
    batch = qa_batch(world, tokenizer, with_image=False)
    assert batch["images"] is None and lm.vision is None
    out = lm(None, batch["text_ids"], batch["text_mask"])
    assert out.prefix_len == 16  # (32/8)^2 reserved image slots
    assert out.logits.shape[1] == 16 + batch["text_ids"].shape[1] and batch["text_ids"].shape[1] <= 40
    assert batch["targets"][0].startswith(world.world.caption(0))  # caption, question and answer as text


def test_greedy_generation_with_images_matches_step_by_step_argmax(world, tokenizer):
    model = tiny_vlm(tokenizer).eval()
    by_length = {len(world[k].meta["question"].split()): k for k in range(len(world))}
    batch = qa_batch(world, tokenizer, indices=list(by_length.values())[:3])
    prompts = batch["prompts"]
    ids, mask = encode_prompts(tokenizer, prompts, 40)  # left padded, different lengths
    assert not bool(mask[:, 0].all())
    new = model.generate(batch["images"], ids, mask, max_new_tokens=4)
    for b in range(3):
        seq = torch.tensor([[tokenizer.bos_id] + tokenizer.encode(prompts[b], special_tokens=False)])
        for t in range(4):
            logits = model(batch["images"][b : b + 1], seq, torch.ones_like(seq, dtype=torch.bool)).logits
            assert logits[0, -1].argmax().item() == new[b, t].item()
            seq = torch.cat([seq, new[b : b + 1, t : t + 1]], dim=1)


# --------------------------------------------------------------------------------------------
# Data layout, transfer, config, metrics


def test_example_layout_and_truncation_keep_the_eos(tokenizer):
    examples = [GenerativeExample(None, "what colour is the star?", "red"),
                GenerativeExample(None, "", "a small red star " * 20)]
    enc = encode_examples(tokenizer, examples, 12)
    ids, target, content = enc["text_ids"], enc["target_mask"], enc["content_mask"]
    answer = tokenizer.encode("red", special_tokens=False)
    prompt_len = 1 + len(tokenizer.encode("what colour is the star?", special_tokens=False))
    assert ids[0, 0] == tokenizer.bos_id and ids[0, prompt_len : prompt_len + len(answer)].tolist() == answer
    assert target[0].nonzero().flatten().tolist() == list(range(prompt_len, prompt_len + len(answer) + 1))
    assert content[0].sum() == len(answer) and not content[0, prompt_len + len(answer)]  # EOS is no content
    assert ids[1, -1] == tokenizer.eos_id and target[1, 1:].all() and not target[1, 0]  # cut, EOS kept


def test_init_from_copies_matching_module_weights_and_refuses_mismatches(tmp_path, tokenizer):
    clip_cfg = RunConfig()
    clip_cfg.model.vision.size, clip_cfg.model.text.size = "vit-micro", "text-micro"
    clip = build_model(clip_cfg.model, 32, 50, 8)
    run = tmp_path / "clip"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(clip_cfg)))
    save_checkpoint(run / "checkpoints", 1, clip.state_dict(), None, {})
    model = tiny_vlm(tokenizer)
    origin = load_matching_weights(model, [str(run)])
    assert origin == {"vision": str(run)}
    assert all(torch.equal(v, clip.state_dict()[f"vision.{k}"]) for k, v in model.vision.state_dict().items())
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))  # scalars start afresh
    bigger = vlm_config()
    bigger.model.vision.size = "vit-tiny"
    with pytest.raises(CheckpointError, match="other shapes"):
        load_matching_weights(build_model(bigger.model, 32, tokenizer.vocab_size, 40), [str(run)])
    with pytest.raises(CheckpointError, match="not a vlalign run"):
        load_matching_weights(model, [str(tmp_path / "missing")])


@pytest.mark.parametrize("overrides, message", [
    (["model.arch=vlm", "objective.name=clip"], "model.arch 'vlm' trains with"),
    (["objective.name=cgvlm"], "trains a language model"),
    (["model.arch=lm", "objective.name=cgvlm"], "model.arch 'lm' trains with"),
    (["model.arch=vlm", "objective.name=generative", "model.vlm.freeze=[vision,eyes]"], "freezable modules"),
])
def test_bad_generative_configs_name_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), overrides)


def test_attribute_recall_and_precision_on_a_known_scene():
    scene = Scene((ShapeObject("star", "red", "small", 0, 0), ShapeObject("circle", "blue", "large", 1, 1)))
    assert attribute_scores("a small red star above a large blue circle", scene) == (1.0, 1.0)
    assert attribute_scores("a small red circle", scene) == (0.0, 0.0)  # red and circle, but not a red circle
    recall, precision = attribute_scores("a red star and a green square", scene)
    assert recall == 0.5 and precision == 0.5
    assert attribute_scores("nothing here", scene) == (0.0, None)
    assert first_sentence("a red star. what colour is the star? red") == "a red star"


# --------------------------------------------------------------------------------------------
# Stages end to end through the CLI


def test_stage1_then_stage2_then_chat_through_the_cli(tmp_path, capsys, monkeypatch):
    tiny = ["--quiet", "--set", "train.precision=fp32", "--set", "train.steps=2", "--set", "train.checkpoint_every=2", "--set", "data.batch_size=8",
            "--set", "model.vlm.decoder=lm-micro", "--set", "data.context_length=40",
            "--set", "model.text.vocab_size=300", "--set", "data.eval=shapes-qa:n=4,seed=1"]
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    assert main(["train", "--recipe", "cgvlm-stage1-cg", "--out", str(stage1), "--no-eval", *tiny,
                 "--set", "data.train=shapes:n=16,seed=0", "--set", "model.init_from=[]"]) == 0
    assert main(["train", "--recipe", "cgvlm-stage2", "--out", str(stage2), *tiny,
                 "--set", "data.train=shapes-qa:n=20,seed=2", "--set", "data.fraction=0.5",
                 "--set", f"model.init_from={stage1}", "--set", "eval.tasks=[vqa,mir-vlm]", "--set", "eval.vqa_n=6"]) == 0
    assert (stage2 / "tokenizer.json").read_text() == (stage1 / "tokenizer.json").read_text()
    metrics = [json.loads(line) for line in (stage1 / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/gen", "loss/con"} <= set(metrics[-1])
    results = json.loads((stage2 / "eval.json").read_text())["results"]
    assert results[0]["labels"] == "all" and results[0]["n"] == 6 and 0 <= results[0]["accuracy"] <= 1
    mir = next(r for r in results if r["task"] == "mir-vlm")  # one distance per decoder layer (lm-micro: 2)
    assert np.isfinite(mir["mir"]) and len(mir["per_layer"]) == 2 and all(d > 0 for d in mir["per_layer"])

    image = tmp_path / "scene.png"
    Image.fromarray(ShapesWorld(1, seed=5)[0].image.transpose(1, 2, 0)).save(image)
    capsys.readouterr()
    assert main(["chat", "--checkpoint", str(stage2), "--image", str(image), "what colour is the star?",
                 "--max-new-tokens", "3"]) == 0
    reply = capsys.readouterr().out
    assert reply.endswith("\n") and len(reply.split()) <= 3
    assert main(["chat", "--checkpoint", str(stage2), "--image", str(tmp_path / "none.png"), "hi"]) == 2
    assert "does not exist" in capsys.readouterr().err

    # Without a question: a conversation about the image, the model loaded once, on a picture the shapes
    # generator did not draw (Pillow: one filled circle on a plain background, another size than the run's).
    drawn = tmp_path / "drawn.png"
    picture = Image.new("RGB", (120, 120), (250, 250, 250))
    ImageDraw.Draw(picture).ellipse((30, 30, 90, 90), fill=(220, 30, 30))
    picture.save(drawn)
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("what colour is the circle?\n\nwhat shape is the red object?\nquit\n"
                                                 "never asked\n"))
    assert main(["chat", "--checkpoint", str(stage2), "--image", str(drawn), "--max-new-tokens", "3"]) == 0
    replies = capsys.readouterr().out.splitlines()
    assert len(replies) == 3  # two answers and a caption; nothing after "quit"
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    assert main(["chat", "--checkpoint", str(stage2), "--image", str(not_an_image), "hi"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.fixture(scope="module")
def text_lm_run(tmp_path_factory):
    """A generative run (a text-only LM, one step): what the dual-encoder commands must refuse."""
    run = tmp_path_factory.mktemp("lm") / "run"
    assert main(["train", "--recipe", "lm-pretrain", "--out", str(run), "--no-eval", "--quiet",
                 "--set", "train.steps=1", "--set", "data.batch_size=4", "--set", "train.precision=fp32",
                 "--set", "data.train=shapes-qa:n=4,seed=3", "--set", "model.vlm.decoder=lm-micro"]) == 0
    return run


@pytest.mark.parametrize("command", [
    ["embed", "--data", "shapes:n=2,seed=0", "--out", "{tmp}/e.safetensors"],
    ["serve", "--images", "shapes:n=2,seed=0"],
    ["benchmark"],
    ["export", "--format", "hf", "--out", "{tmp}/exported"],
])
def test_dual_encoder_commands_refuse_a_generative_run_in_one_line(command, text_lm_run, tmp_path, capsys):
    capsys.readouterr()
    args = [part.replace("{tmp}", str(tmp_path)) for part in command]
    assert main([args[0], "--checkpoint", str(text_lm_run), *args[1:]]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "generative run" in err and "vlalign chat" in err
    assert not (tmp_path / "exported").exists() and not (tmp_path / "e.safetensors").exists()


def test_content_words_leave_function_words_out_of_the_contrastive_sentence(world, tokenizer):
    batch = collate_generative(world.world, list(range(6)), tokenizer, 40, ImageTransform(32, 3))  # captions
    examples = [GenerativeExample(None, "", "a picture of a large red star to the left of a small blue circle")]
    enc = encode_examples(tokenizer, examples, 40)
    kept = tokenizer.decode(enc["text_ids"][0][enc["content_word_mask"][0]].tolist())
    assert kept == "large red star left small blue circle"
    assert (enc["content_word_mask"] <= enc["content_mask"]).all()
    model = tiny_vlm(tokenizer)
    out = model(batch["images"], batch["text_ids"], batch["text_mask"])
    losses = [build_objective(ObjectiveConfig(name="cgvlm", contrastive_words=words))(out, batch)[1]["loss/con"]
              for words in ("all", "content")]
    assert losses[0] != pytest.approx(losses[1], abs=1e-6)


def test_shapes_qa_types_keep_only_those_questions_in_the_same_order():
    from vlalign.data.specs import build_source

    every = build_source("shapes-qa:n=30,seed=1")
    chosen = build_source("shapes-qa:n=30,seed=1,types=colour+shape")
    assert chosen.items == [item for item in every.items if item[3] in ("colour", "shape")]
    assert 0 < len(chosen) < len(every) and chosen.name.endswith("types=colour+shape")
    with pytest.raises(DataError, match="unknown question type 'hue'"):
        build_source("shapes-qa:n=3,seed=1,types=colour+hue")
