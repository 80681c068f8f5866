"""Options that change how a step is computed, not what: pooled-only towers, gradient checkpointing,
precision (autocast, chosen by measurement), torch.compile, the AdamW kernel, and batched inference."""

import json
import math

import pytest
import torch
from distributed_scenarios import global_batch, gradients, micro_model

from vlalign.api import CPU_CHUNK_TOKENS, Aligner
from vlalign.config import ObjectiveConfig, RunConfig, apply_overrides
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import ConfigError
from vlalign.eval.report import write_report
from vlalign.models import build_model
from vlalign.models.registry import TEXT_SIZES, VISION_SIZES, TowerSize
from vlalign.objectives import build_objective
from vlalign.recipes import get_recipe
from vlalign.train import metrics, precision, run_training
from vlalign.train.acceleration import compile_model, enable_grad_checkpointing
from vlalign.train.metrics import count_flops_per_sample, machine_key
from vlalign.train.optim import build_optimizer, implementation_flags, set_implementation
from vlalign.train.precision import outputs_in_fp32, resolve_precision
from vlalign.train.setup import build_components
from vlalign.train.step import forward_backward, model_inputs


def model_inputs_of(batch: dict) -> tuple:
    """The positional inputs of the forward (these batches have no optional keyword inputs)."""
    args, kwargs = model_inputs(batch)
    assert not kwargs
    return args


CLIP = build_objective(ObjectiveConfig(name="clip"))


def loss_and_gradients(model, batch, objective=CLIP, dtype=torch.float32):
    model.zero_grad(set_to_none=True)
    loss, _ = forward_backward(model, objective, batch, dtype=dtype)
    return loss, gradients(model)


def assert_gradients_close(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert (value - b[name]).norm() / value.norm().clamp_min(1e-8) < rtol, name


# ---------------------------------------------------------------------------------------------
# pooled-only towers: the embeddings-only forward of a CLIP/SigLIP step


def test_embeddings_only_forward_gives_the_same_embeddings_and_gradients():
    model, batch = micro_model(), global_batch(size=6)  # random caption lengths, right-padded
    probe = torch.linspace(-1, 1, 32)  # a loss whose gradient is not ~0 (unit norms make sum(e^2) constant)
    grads = []
    for embeddings_only in (False, True):
        model.zero_grad(set_to_none=True)
        out = model(*model_inputs_of(batch), embeddings_only=embeddings_only)
        ((out.image_embeds * probe).sum() + (out.text_embeds * probe.flip(0)).sum()).backward()
        grads.append((out.image_embeds.detach(), out.text_embeds.detach(), gradients(model)))
    (image_full, text_full, grad_full), (image_fast, text_fast, grad_fast) = grads
    torch.testing.assert_close(image_fast, image_full, atol=1e-6, rtol=0)
    torch.testing.assert_close(text_fast, text_full, atol=1e-6, rtol=0)
    assert_gradients_close(grad_full, grad_fast, rtol=1e-5)


def test_embeddings_only_skips_the_last_blocks_work_and_unread_padding():
    model, batch = micro_model(), global_batch(size=8)
    batch["text_ids"][:, 10:] = 0  # every caption ends by position 10 of 16
    batch["text_mask"] = batch["text_ids"] != 0
    out = model(*model_inputs_of(batch), embeddings_only=True)
    assert out.vision.tokens is None and out.text.tokens is None
    assert out.vision.intermediates[-1].shape[1] == 1  # the last block ran for the CLS token only
    assert out.text.intermediates[0].shape[1] == 10  # padding columns after the longest caption dropped
    full, fast = count_flops_per_sample(model, batch), count_flops_per_sample(model, batch, {"embeddings_only": True})
    assert fast < 0.9 * full


def test_fdt_heads_keep_every_token():
    cfg = RunConfig()
    cfg.model.vision.size, cfg.model.text.size, cfg.model.head = "vit-micro", "text-micro", "fdt"
    cfg.model.fdt.num_codes, cfg.model.fdt.code_dim = 16, 8
    model, batch = build_model(cfg.model, 32, 300, 16), global_batch(size=4)
    full, fast = model(*model_inputs_of(batch)), model(*model_inputs_of(batch), embeddings_only=True)
    assert fast.vision.tokens is not None and fast.text.tokens is not None
    torch.testing.assert_close(fast.image_embeds, full.image_embeds, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# gradient checkpointing


@pytest.mark.parametrize("accum", [1, 2])
def test_gradient_checkpointing_gives_the_same_gradients(accum):
    batch = global_batch(size=8)
    reference, checkpointed = micro_model(), micro_model()
    assert enable_grad_checkpointing(checkpointed) == 2  # the vision and the text stack
    loss_a, _ = forward_backward(reference, CLIP, batch, accum)
    loss_b, _ = forward_backward(checkpointed, CLIP, batch, accum)
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-6)
    assert_gradients_close(gradients(reference), gradients(checkpointed), rtol=1e-6)


def test_gradient_checkpointing_in_the_language_model():
    cfg = RunConfig()
    cfg.model.arch, cfg.objective.name, cfg.model.vlm.decoder = "lm", "generative", "lm-micro"
    objective = build_objective(cfg.objective)
    ids = torch.randint(3, 100, (4, 12), generator=torch.Generator().manual_seed(0))
    batch = {"text_ids": ids, "text_mask": torch.ones_like(ids, dtype=torch.bool), "target_mask": ids > 50,
             "images": None, "channel_ids": None}
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg.model, 32, 100, 12)
        if checkpointing:
            enable_grad_checkpointing(model)
        results.append(loss_and_gradients(model, batch, objective))
    assert results[0][0].item() == pytest.approx(results[1][0].item(), abs=1e-6)
    assert_gradients_close(results[0][1], results[1][1], rtol=1e-6)


def test_the_config_key_switches_checkpointing_on(tmp_path):
    cfg = apply_overrides(get_recipe("tiny"), ["train.grad_checkpointing=true", "data.train=shapes:n=64,seed=0"])
    model = build_components(cfg, tmp_path).model
    assert model.vision.transformer.grad_checkpointing and model.text.transformer.grad_checkpointing


# ---------------------------------------------------------------------------------------------
# precision


@pytest.fixture
def probe_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLALIGN_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(("speedup", "expected"), [(0.1, torch.float32), (1.1, torch.float32), (3.0, torch.bfloat16)])
def test_auto_precision_picks_bf16_only_where_it_measured_clearly_faster(probe_cache, monkeypatch, speedup, expected):
    probes = []
    monkeypatch.setattr(precision, "probe_bf16_speedup", lambda device: probes.append(device) or speedup)
    assert resolve_precision("auto") == expected and resolve_precision("auto") == expected
    assert probes == ["cpu"]  # measured once, then read from the cache
    cached = json.loads((probe_cache / "peak.json").read_text())
    assert cached[machine_key("cpu", "bf16_speedup")] == speedup


def test_explicit_precisions_do_not_probe(probe_cache, monkeypatch):
    monkeypatch.setattr(precision, "probe_bf16_speedup", lambda device: pytest.fail("probed"))
    assert resolve_precision("fp32") == torch.float32 and resolve_precision("bf16") == torch.bfloat16
    with pytest.raises(ConfigError, match="train.precision"):
        apply_overrides(RunConfig(), ["train.precision=fp16"])


def test_a_run_records_the_precision_auto_chose_at_every_step(tiny_cfg, tmp_path, monkeypatch):
    """Trained on a machine where auto picks fp32, then resumed on one where it picks bf16 (a fresh probe cache)."""
    tiny_cfg.train.precision = "auto"
    tiny_cfg.train.steps, tiny_cfg.train.checkpoint_every = 2, 2
    run = tmp_path / "run"
    for machine, speedup in (("fp32-machine", 1.1), ("bf16-machine", 3.0)):
        monkeypatch.setenv("VLALIGN_CACHE_DIR", str(tmp_path / machine))
        monkeypatch.setattr(precision, "probe_bf16_speedup", lambda device, speedup=speedup: speedup)
        run_training(tiny_cfg, run, progress=False)
        tiny_cfg.train.steps = 4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["precision"]) for r in rows] == [(1, "fp32"), (2, "fp32"), (3, "bf16"), (4, "bf16")]
    assert "precision fp32, bf16" in write_report(run, [], {}).read_text()


def test_the_real_bf16_probe_measures_a_ratio():
    speedup = precision.probe_bf16_speedup("cpu", repeats=1)
    assert math.isfinite(speedup) and speedup > 0


def test_bf16_autocast_computes_the_towers_in_bf16_and_the_loss_and_gradients_in_fp32():
    batch = global_batch(size=8)
    loss32, grads32 = loss_and_gradients(micro_model(), batch)
    model = micro_model()
    loss16, grads16 = loss_and_gradients(model, batch, dtype=torch.bfloat16)
    assert loss16.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads16.values())
    assert loss16.item() == pytest.approx(loss32.item(), abs=0.05)
    assert loss16.item() != loss32.item()  # bf16 really ran
    for name in grads32:  # the same descent direction
        cosine = torch.nn.functional.cosine_similarity(grads32[name].flatten(), grads16[name].flatten(), dim=0)
        assert cosine > 0.95 or grads32[name].norm() < 1e-4, name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*model_inputs_of(batch))
    assert out.image_embeds.dtype == torch.bfloat16  # the projection ran in bf16
    assert outputs_in_fp32(out).image_embeds.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# torch.compile


def test_a_compiled_model_gives_the_same_loss_and_gradients():
    """The compile path traced through dynamo and AOTAutograd (backend "aot_eager": the graphs inductor
    would generate code for; inductor itself takes minutes here and is checked by the benchmark)."""
    VISION_SIZES["compile-test"], TEXT_SIZES["compile-test"] = TowerSize(16, 1, 2), TowerSize(16, 1, 2)
    cfg = RunConfig()
    cfg.model.vision.size = cfg.model.text.size = "compile-test"
    cfg.model.embed_dim = 8
    batch = global_batch(size=4)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(build_model(cfg.model, 32, 300, 16))
    compiled = compile_model(models[1], backend="aot_eager")
    loss, grads = loss_and_gradients(models[0], batch)
    loss_c, grads_c = loss_and_gradients(compiled, batch)
    assert loss_c.item() == pytest.approx(loss.item(), abs=1e-5)
    assert_gradients_close(grads, grads_c, rtol=1e-5)
    assert compiled.state_dict().keys() == models[0].state_dict().keys()  # checkpoints stay interchangeable
    del VISION_SIZES["compile-test"], TEXT_SIZES["compile-test"]


# ---------------------------------------------------------------------------------------------
# AdamW kernels


def test_every_adamw_implementation_gives_the_same_update():
    """The same gradients (a real CLIP step's) through each kernel for three steps: the same weights up to
    the rounding of a different operation order, far below one step's size (lr)."""
    cfg = get_recipe("tiny")
    reference = micro_model()
    forward_backward(reference, CLIP, global_batch(size=8))
    grads = gradients(reference)
    trained = {}
    for name in ("for-loop", "foreach", "fused"):
        cfg.optim.implementation = name
        model = micro_model()
        optimizer = build_optimizer(model, cfg.optim)
        assert all(g["fused"] == (name == "fused") and g["foreach"] == (name == "foreach")
                   for g in optimizer.param_groups)
        for _ in range(3):
            for key, param in model.named_parameters():
                param.grad = grads[key].clone() if key in grads else None
            optimizer.step()
        trained[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name in ("foreach", "fused"):
        for key, value in trained["for-loop"].items():
            torch.testing.assert_close(trained[name][key], value, atol=1e-3 * cfg.optim.lr, rtol=0)


def test_auto_is_fused_for_plain_tensors_and_a_restored_optimizer_keeps_the_configured_kernel():
    model = micro_model()
    assert implementation_flags("auto", list(model.parameters())) == {"fused": True, "foreach": False}
    cfg = get_recipe("tiny").optim
    cfg.implementation = "for-loop"
    saved = build_optimizer(model, cfg).state_dict()
    cfg.implementation = "auto"
    optimizer = build_optimizer(model, cfg)
    optimizer.load_state_dict(saved)  # brings back the saved flags ...
    assert not optimizer.param_groups[0]["fused"]
    set_implementation(optimizer, cfg.implementation)  # ... which the trainer then sets back
    assert optimizer.param_groups[0]["fused"] and not optimizer.param_groups[0]["foreach"]


# ---------------------------------------------------------------------------------------------
# inference


def make_aligner() -> Aligner:
    captions = ["a small red circle", "a large blue star at the top left of the picture", "a square", "two shapes"]
    tokenizer = train_tokenizer(captions * 10, 300)
    cfg = RunConfig()
    cfg.data.context_length, cfg.model.embed_dim = 16, 32
    model = micro_model().eval()
    return Aligner(model, tokenizer, ImageTransform(32, 3), cfg, run_dir=None, step=0)


def test_length_sorted_text_chunks_give_each_text_its_own_embedding_in_input_order():
    aligner = make_aligner()
    words = ["a", "small", "red", "circle", "and", "a", "large", "blue", "star", "at", "the", "top", "left"]
    texts = [" ".join(words[: 1 + (7 * i) % len(words)]) for i in range(11)]
    ids, mask = aligner.tokenizer(texts, 16)
    with torch.no_grad():
        expected = aligner.model.encode_text(ids, mask)  # one padded batch, every token computed
    got = aligner.encode_text(texts, max_tokens=20)  # several chunks of different lengths
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert aligner.encode_text([]).shape == (0, 32)


def test_pooled_only_image_embeddings_match_the_full_forward():
    aligner = make_aligner()
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = aligner.model.encode_image(pixels)
    torch.testing.assert_close(aligner.encode_image(pixels, batch_size=2), expected, atol=1e-6, rtol=0)


def test_the_flop_count_of_a_compiled_model_runs_eagerly():
    model = micro_model()
    batch = global_batch(size=2)
    expected = count_flops_per_sample(model, batch)
    assert metrics.count_flops_per_sample(compile_model(model, backend="eager"), batch) == expected


def test_cpu_image_chunks_hold_about_max_tokens_and_give_the_one_batch_embeddings():
    aligner = make_aligner()  # 32 px images in 8 px patches: 17 tokens each
    pixels = torch.randn(9, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert aligner._images_per_call(pixels, 40) == 2
    assert aligner._images_per_call(pixels, 10) == 1
    assert aligner._images_per_call(pixels, None) == CPU_CHUNK_TOKENS // 17
    with torch.no_grad():
        expected = aligner.model.encode_image(pixels)  # one batch
    torch.testing.assert_close(aligner.encode_image(pixels, max_tokens=40), expected, atol=1e-6, rtol=0)
