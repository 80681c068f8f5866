"""Issue 13 adapters: VL-PET gates, VL-Adapter sharing, LaVIN's MMA, Dynamic Rank-Selective LoRA, and
starting an adapted model from an unadapted run."""

import pytest
import torch
import torch.nn.functional as F
import yaml

from vlalign.checkpoint import save_checkpoint
from vlalign.config import apply_overrides
from vlalign.errors import ConfigError
from vlalign.models import build_model
from vlalign.models.adapters import (
    BottleneckAdapter,
    base_names,
    merge_adapters,
    parameter_counts,
    shrink_rank_importance,
)
from vlalign.models.granularity_gate import GranularityGate
from vlalign.models.modality_adapter import MixtureOfModalityAdapter
from vlalign.models.rank_lora import RankSelectiveLoRA
from vlalign.models.transfer import load_matching_weights
from vlalign.recipes import get_recipe


def _model(*overrides):
    cfg = apply_overrides(get_recipe("tiny"), list(overrides))
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.data.image_size, 300, cfg.data.context_length), cfg


def _batch(cfg, B=4):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 300, (B, cfg.data.context_length), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 7:] = False
    ids[~mask] = 0
    return torch.randn(B, 3, cfg.data.image_size, cfg.data.image_size, generator=g), ids, mask


def _randomise(model, names=("lora_", "up", "down", "adapter_", "gate")):
    """Give adapter weights non-zero values (they start at zero or one, where several checks are trivial)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(n in name for n in names):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("granularity,count", [("module", 1), ("head", 6), ("element", 12)])
def test_gate_has_one_value_per_granule(granularity, count):
    gate = GranularityGate(12, granularity, group_size=2)
    assert gate.logit.numel() == count
    torch.testing.assert_close(gate.values(), torch.ones(12))  # starts as the ungated module
    with torch.no_grad():
        gate.logit.copy_(torch.arange(count, dtype=torch.float32) - count / 2)
    values = gate.values()
    expected = (2 * torch.sigmoid(gate.logit)).repeat_interleave(12 // count)
    torch.testing.assert_close(values, expected)
    delta = torch.randn(3, 5, 12)
    torch.testing.assert_close(gate(delta), delta * expected)


def test_gated_bottleneck_matches_formula():
    mlp = torch.nn.Linear(8, 8)
    gate = GranularityGate(8, "head", group_size=4)
    adapter = BottleneckAdapter(mlp, 8, 3, gate)
    _randomise(adapter, ("up", "down", "logit"))
    x = torch.randn(2, 5, 8)
    h = mlp(x)
    expected = h + (adapter.up(F.gelu(adapter.down(h)))) * (2 * torch.sigmoid(gate.logit)).repeat_interleave(4)
    torch.testing.assert_close(adapter(x), expected)


@pytest.mark.parametrize("kind", ["bottleneck", "mma"])
def test_shared_adapters_are_one_set_of_weights(kind):
    model, cfg = _model(f"model.adapter.kind={kind}", "model.adapter.share=true", "model.adapter.rank=4")
    unshared, _ = _model(f"model.adapter.kind={kind}", "model.adapter.rank=4")
    vision = model.vision.transformer.blocks[0].mlp
    text = model.text.transformer.blocks[0].mlp
    assert vision.down is text.down and vision.up is text.up and vision.mlp is not text.mlp
    # counted once: the shared model trains half the adapter weights of the unshared one (equal depths)
    adapter_params = lambda m: parameter_counts(m)["trainable"] - sum(  # noqa: E731
        p.numel() for n, p in m.named_parameters() if n.startswith(("image_head", "text_head", "logit_")))
    assert 2 * adapter_params(model) == adapter_params(unshared)
    _randomise(model)
    images, ids, mask = _batch(cfg)
    out = model(images, ids, mask)
    (out.image_embeds.sum() + out.text_embeds.sum()).backward()
    # the shared weight's gradient is the sum of both towers' uses: zero the text path and it changes
    grad_both = vision.down.weight.grad.clone()
    model.zero_grad()
    model(images, ids, mask).image_embeds.sum().backward()
    assert not torch.allclose(grad_both, vision.down.weight.grad)


def test_share_needs_one_width_and_a_shareable_kind():
    with pytest.raises(ConfigError, match="one width"):
        _model("model.adapter.kind=bottleneck", "model.adapter.share=true", "model.text.size=text-tiny")
    with pytest.raises(ConfigError, match="share"):
        _model("model.adapter.kind=lora", "model.adapter.share=true")
    with pytest.raises(ConfigError, match="sparsity"):
        _model("model.adapter.kind=lora", "model.adapter.sparsity=0.1")
    with pytest.raises(ConfigError, match="gate"):
        _model("model.adapter.gate=head")


def test_mma_starts_as_identity_and_routes_per_token():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU())
    adapter = MixtureOfModalityAdapter(mlp, 8, 3, temperature=2.0)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(adapter(x), mlp(x))  # zero up-projections: the pretrained function
    _randomise(adapter, ("up", "down", "adapter_router"))
    h = mlp(x)
    w = F.softmax(adapter.adapter_router(h) / 2.0, dim=-1)  # [2, 5, 2]
    assert torch.allclose(w.sum(-1), torch.ones(2, 5))
    z = F.gelu(adapter.down(h))
    expected = h + w[..., :1] * adapter.up[0](z) + w[..., 1:] * adapter.up[1](z)
    torch.testing.assert_close(adapter(x), expected)
    # routing is per token: a token's output does not depend on the other tokens of its sequence
    torch.testing.assert_close(adapter(x[:, :1]), adapter(x)[:, :1])


def test_mma_paths_differ_and_router_learns_in_training():
    # Zero-initialised paths with a zero router would stay identical (equal weights, equal gradients) and the
    # router would never get a gradient: MMA would train as one plain bottleneck adapter.
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU())
    adapter = MixtureOfModalityAdapter(mlp, 8, 3)
    for p in mlp.parameters():
        p.requires_grad = False
    router = adapter.adapter_router.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in adapter.parameters() if p.requires_grad], lr=1e-2)
    x, target = torch.randn(16, 5, 8), torch.randn(16, 5, 8)
    for _ in range(20):
        optimizer.zero_grad()
        F.mse_loss(adapter(x), target).backward()
        optimizer.step()
    assert (adapter.up[0].weight - adapter.up[1].weight).abs().max() > 1e-3
    assert (adapter.adapter_router.weight - router).abs().max() > 1e-3


def test_mma_pooled_only_path_matches_full_forward():
    model, cfg = _model("model.adapter.kind=mma", "model.adapter.share=true", "model.adapter.gate=element")
    _randomise(model)
    model.eval()
    images, ids, mask = _batch(cfg)
    with torch.no_grad():
        full = model(images, ids, mask)
        fast = model(images, ids, mask, embeddings_only=True)
    torch.testing.assert_close(fast.text_embeds, full.text_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.image_embeds, full.image_embeds, atol=1e-5, rtol=1e-5)


def test_rank_lora_forward_is_the_explicit_low_rank_update():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 4)
    layer = RankSelectiveLoRA(base, rank=3, alpha=6.0, sparsity=0.0)
    _randomise(layer, ("lora_",))
    x = torch.randn(5, 6)
    delta = sum(layer.lora_importance[k] * torch.outer(layer.lora_B[:, k], layer.lora_A[k]) for k in range(3))
    torch.testing.assert_close(layer(x), base(x) + x @ (2.0 * delta).T)


def test_proximal_step_is_soft_thresholding_and_reaches_exact_zero():
    layer = RankSelectiveLoRA(torch.nn.Linear(4, 4), rank=4, alpha=4.0, sparsity=2.0)
    with torch.no_grad():
        layer.lora_importance.copy_(torch.tensor([0.5, -0.05, 0.1, -1.0]))
    model = torch.nn.Sequential(layer)
    metrics = shrink_rank_importance(model, lr=0.05)  # threshold lr * λ = 0.1
    torch.testing.assert_close(layer.lora_importance.detach(), torch.tensor([0.4, 0.0, 0.0, -0.9]))
    assert metrics == {"adapter/active_ranks": 2, "adapter/active_rank_fraction": 0.5}
    shrink_rank_importance(model, lr=0.05)
    assert layer.lora_importance[1] == 0 and layer.lora_importance[2] == 0  # pruned ranks stay at zero


@pytest.mark.parametrize("kind,gate", [("rank-lora", "none"), ("rank-lora", "head"), ("lora", "element")])
def test_merged_forward_equals_unmerged(kind, gate):
    model, cfg = _model(f"model.adapter.kind={kind}", f"model.adapter.gate={gate}", "model.adapter.rank=4",
                        "model.adapter.targets=attn.qkv,mlp.fc1")
    _randomise(model)
    pruned = None
    if kind == "rank-lora":
        pruned = model.vision.transformer.blocks[0].attn.qkv
        with torch.no_grad():
            pruned.lora_importance[1:3] = 0.0  # two ranks pruned
    model.eval()
    images, ids, mask = _batch(cfg)
    with torch.no_grad():
        before = model(images, ids, mask)
        if pruned is not None:
            delta = pruned.delta_weight()
            assert torch.linalg.matrix_rank(delta) == pruned.active_ranks() == 2  # pruned ranks are gone
        merge_adapters(model)
        after = model(images, ids, mask)
    assert not any(isinstance(m, RankSelectiveLoRA) or hasattr(m, "lora_A") for m in model.modules())
    torch.testing.assert_close(after.image_embeds, before.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after.text_embeds, before.text_embeds, atol=1e-5, rtol=1e-5)
    plain, _ = _model()
    plain.load_state_dict(model.state_dict())  # merged weights load into the unadapted architecture


@pytest.mark.parametrize("kind", ["lora", "rank-lora", "bottleneck", "mma"])
def test_adapted_model_starts_from_an_unadapted_run(tmp_path, kind):
    plain, cfg = _model()
    save_checkpoint(tmp_path / "checkpoints", 1, plain.state_dict(), None, {})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({}))
    torch.manual_seed(5)  # other initial tower weights than the run's
    adapted = build_model(apply_overrides(cfg, [f"model.adapter.kind={kind}"]).model, cfg.data.image_size, 300,
                          cfg.data.context_length)
    names = base_names(adapted)
    assert any(k != v for k, v in names.items())  # wrapped layers have other names than the run's
    load_matching_weights(adapted, [str(tmp_path)])
    plain.eval(), adapted.eval()
    images, ids, mask = _batch(cfg)
    with torch.no_grad():  # adapters start as the identity: the adapted model computes the run's function
        torch.testing.assert_close(adapted(images, ids, mask).image_embeds, plain(images, ids, mask).image_embeds)
        torch.testing.assert_close(adapted(images, ids, mask).text_embeds, plain(images, ids, mask).text_embeds)


def test_token_embeddings_can_train_with_the_adapters():
    model, _ = _model("model.adapter.kind=bottleneck", "model.adapter.train_token_embeddings=true")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "text.token_embedding.weight" in trainable
    assert not any(n.startswith(("text.", "vision.")) and ".down." not in n and ".up." not in n
                   for n in trainable - {"text.token_embedding.weight"})
    plain, _ = _model("model.adapter.kind=bottleneck")
    assert not plain.text.token_embedding.weight.requires_grad
