import pytest
import torch

from vlalign.config import apply_overrides
from vlalign.errors import ConfigError
from vlalign.models import build_model
from vlalign.models.adapters import (
    is_adapter_parameter,
    merge_adapters,
    parameter_counts,
)
from vlalign.objectives import build_objective
from vlalign.recipes import get_recipe


def _model(*overrides):
    cfg = apply_overrides(get_recipe("tiny"), list(overrides))
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.data.image_size, 300, cfg.data.context_length), cfg


def _batch(cfg, B=6):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 300, (B, cfg.data.context_length), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 9:] = False
    ids[~mask] = 0
    images = torch.randn(B, 3, cfg.data.image_size, cfg.data.image_size, generator=g)
    return images, ids, mask


def _one_step(model, cfg):
    images, ids, mask = _batch(cfg)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss, _ = build_objective(cfg.objective)(model(images, ids, mask), {})
    loss.backward()
    opt.step()


@pytest.mark.parametrize("kind", ["lora", "bottleneck"])
def test_only_adapters_and_heads_change(kind):
    model, cfg = _model(f"model.adapter.kind={kind}", "model.adapter.rank=4")
    # LoRA's B (and the bottleneck's up) start at zero, so a first step moves only half of each adapter:
    # give them a value so every adapter parameter gets a gradient.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adapter_parameter(name):
                p.normal_(std=0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _one_step(model, cfg)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    adapters = {n for n in before if is_adapter_parameter(n)}
    towers = {n for n in before if n.startswith(("vision.", "text.")) and n not in adapters}
    assert adapters and adapters <= changed
    assert not (changed & towers), f"frozen tower weights changed: {sorted(changed & towers)[:3]}"
    assert changed - adapters <= {n for n in before if n.startswith(("image_head", "text_head", "logit_"))}
    counts = parameter_counts(model)
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad) < counts["total"]


def test_lora_wraps_vlalign_attention_and_merge_is_exact():
    model, cfg = _model("model.adapter.kind=lora", "model.adapter.rank=4", "model.adapter.targets=attn.qkv,mlp.fc1")
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert wrapped and all(n.endswith(("attn.qkv", "mlp.fc1")) for n in wrapped)
    assert {n.split(".")[0] for n in wrapped} == {"vision", "text"}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.1)  # a non-zero update, so merging has something to fold in
    model.eval()
    images, ids, mask = _batch(cfg)
    with torch.no_grad():
        unmerged = model(images, ids, mask)
        merge_adapters(model)
        merged = model(images, ids, mask)
    assert not any(hasattr(m, "lora_A") for m in model.modules())
    torch.testing.assert_close(merged.image_embeds, unmerged.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged.text_embeds, unmerged.text_embeds, atol=1e-5, rtol=1e-5)
    plain, _ = _model()  # merged weights load into the unadapted architecture
    plain.load_state_dict(model.state_dict())


def test_locked_text_with_lora_on_vision_only():
    model, _ = _model("model.text.locked=true", "model.adapter.kind=lora", "model.adapter.towers=vision")
    assert not any(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad == is_adapter_parameter(n) for n, p in model.vision.named_parameters())


def test_bad_adapter_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="match no layer"):
        _model("model.adapter.kind=lora", "model.adapter.targets=attn.q_proj")
    with pytest.raises(ConfigError, match="towers"):
        _model("model.adapter.kind=lora", "model.adapter.towers=audio")
    with pytest.raises(ConfigError, match="not one of"):
        _model("model.adapter.kind=houlsby")


def test_unadapted_tower_stays_trainable():
    model, _ = _model("model.adapter.kind=lora", "model.adapter.towers=vision")
    assert all(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.image_head.parameters()) and model.logit_scale.requires_grad
