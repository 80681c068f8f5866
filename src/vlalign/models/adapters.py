"""Parameter-efficient tuning of the towers: LoRA through ``peft``, and bottleneck adapters.

``model.adapter.kind``:

- ``lora`` (Hu et al. 2021): ``peft`` wraps the named ``nn.Linear`` layers (by default the fused
  ``attn.qkv`` and ``attn.proj`` of every block) with ``W + (alpha / r) B A``. vlalign's attention is
  made of plain ``nn.Linear`` modules, so peft finds them; ``nn.MultiheadAttention`` (open_clip's
  towers) hides its projections in raw parameters and cannot be targeted the same way.
- ``bottleneck`` (Pfeiffer et al. 2021, after the feed-forward sub-layer): each block's MLP output
  ``h`` becomes ``h + up(gelu(down(h)))`` with ``up`` zero-initialised, so training starts from the
  unadapted model. peft has no bottleneck adapter, so it lives here. It is not linear, so it cannot
  be merged into the weights; exports keep it as modules.

The adapted towers' own weights are frozen; heads and the logit scale/bias stay trainable.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.errors import ConfigError


class BottleneckAdapter(nn.Module):
    """``mlp(x) + up(gelu(down(mlp(x))))``: a residual bottleneck after a block's feed-forward layer."""

    def __init__(self, mlp: nn.Module, width: int, rank: int):
        super().__init__()
        self.mlp = mlp
        self.down = nn.Linear(width, rank)
        self.up = nn.Linear(rank, width)
        nn.init.zeros_(self.up.weight)  # identity at start: the pretrained function is unchanged
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(x)
        return h + self.up(F.gelu(self.down(h)))


def apply_adapter(model: nn.Module, cfg) -> nn.Module:
    """Insert the adapters named by ``cfg`` (an ``AdapterConfig``) into ``model`` in place, and freeze
    the adapted towers' base weights. ``kind="none"`` leaves the model untouched."""
    if cfg.kind == "none":
        return model
    unknown = set(cfg.towers) - {"vision", "text"}
    if unknown or not cfg.towers:
        raise ConfigError(f"model.adapter.towers must name vision and/or text, got {cfg.towers}.")
    if cfg.kind == "lora":
        _inject_lora(model, cfg)
    elif cfg.kind == "bottleneck":
        _inject_bottleneck(model, cfg)
    else:
        raise ConfigError(f"model.adapter.kind '{cfg.kind}' is not one of: none, lora, bottleneck.")
    for tower in cfg.towers:  # base weights of adapted towers are frozen; adapter weights train
        for name, param in getattr(model, tower).named_parameters():
            param.requires_grad = is_adapter_parameter(name)
    return model


def _inject_lora(model: nn.Module, cfg) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    towers = "|".join(map(re.escape, cfg.towers))
    targets = "|".join(map(re.escape, cfg.targets))
    pattern = rf"({towers})\..*\b({targets})"
    if not any(re.fullmatch(pattern, name) for name, _ in model.named_modules()):
        raise ConfigError(f"model.adapter.targets {cfg.targets} match no layer of the {'/'.join(cfg.towers)} "
                          "tower(s). vlalign towers have attn.qkv, attn.proj, mlp.fc1, mlp.fc2.")
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=pattern,
                      bias="none")
    # inject_adapter_in_model freezes everything but the adapters: restore the flags outside the
    # adapted towers (heads, an unadapted tower), which apply_adapter does not touch.
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    inject_adapter_in_model(lora, model)
    for name, param in model.named_parameters():
        if name in trainable and not name.startswith(tuple(f"{t}." for t in cfg.towers)):
            param.requires_grad = True


def _inject_bottleneck(model: nn.Module, cfg) -> None:
    from vlalign.models.layers import Block

    count = 0
    for tower in cfg.towers:
        for block in getattr(model, tower).modules():
            if isinstance(block, Block):
                block.mlp = BottleneckAdapter(block.mlp, block.mlp.fc2.out_features, cfg.rank)
                count += 1
    if count == 0:
        raise ConfigError(f"model.adapter.kind=bottleneck needs vlalign transformer blocks; the "
                          f"{'/'.join(cfg.towers)} tower(s) have none (use kind=lora for Hugging Face towers).")


def is_adapter_parameter(name: str) -> bool:
    return ".lora_" in name or ".down." in name or ".up." in name


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base ``nn.Linear`` and drop the wrappers (in place).

    The merged model has the plain module names again, so it loads with ``adapter.kind=none``.
    Bottleneck adapters are not linear and stay.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    return model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameters, overall and per top-level part (vision, text, heads, ...)."""
    counts = {"total": 0, "trainable": 0}
    for name, param in model.named_parameters():
        part = name.split(".")[0]
        counts["total"] += param.numel()
        counts[f"{part}/total"] = counts.get(f"{part}/total", 0) + param.numel()
        if param.requires_grad:
            counts["trainable"] += param.numel()
            counts[f"{part}/trainable"] = counts.get(f"{part}/trainable", 0) + param.numel()
    return counts
