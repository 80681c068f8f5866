"""Parameter-efficient tuning of the towers: LoRA (through ``peft``, or rank-selective), bottleneck and
mixture-of-modality adapters, with an optional VL-PET gate on their outputs.

``model.adapter.kind``:

- ``lora`` (Hu et al. 2021): ``peft`` wraps the named ``nn.Linear`` layers (by default the fused
  ``attn.qkv`` and ``attn.proj`` of every block) with ``W + (alpha / r) B A``. vlalign's attention is
  made of plain ``nn.Linear`` modules, so peft finds them; ``nn.MultiheadAttention`` (open_clip's
  towers) hides its projections in raw parameters and cannot be targeted the same way.
- ``rank-lora`` (Dynamic Rank-Selective LoRA, ``vlalign.models.rank_lora``): LoRA on the same targets
  with a learnable importance per rank and an L1 penalty (``model.adapter.sparsity``), so the effective
  rank of each module adapts; merged into the weights like ``lora``.
- ``bottleneck`` (Pfeiffer et al. 2021, after the feed-forward sub-layer; VL-Adapter, Sung et al. 2022):
  each block's MLP output ``h`` becomes ``h + up(gelu(down(h)))`` with ``up`` zero-initialised, so
  training starts from the unadapted model. peft has no bottleneck adapter, so it lives here. It is not
  linear, so it cannot be merged into the weights; exports keep it as modules.
- ``mma`` (LaVIN's Mixture-of-Modality Adapter, ``vlalign.models.modality_adapter``): a bottleneck with
  two up-projections (text-only and image paths) and a router between them.

``model.adapter.share`` (bottleneck, mma): block i of the vision and of the text tower use one adapter
(VL-Adapter's weight sharing: one set of adapter weights serves several inputs and tasks).
``model.adapter.train_token_embeddings``: the text tower's token embeddings train as well (the words of a new
task that the base never read have untrained embeddings, which no adapter after them can tell apart).
``model.adapter.gate`` (VL-PET, ``vlalign.models.granularity_gate``): a learned gate on every adapter's
output, one value per module, per head or per element; folded into the weights when LoRA is merged.

The adapted towers' own weights are frozen; heads and the logit scale/bias stay trainable.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from vlalign.errors import ConfigError
from vlalign.models.granularity_gate import GranularityGate
from vlalign.models.modality_adapter import MixtureOfModalityAdapter
from vlalign.models.rank_lora import RankSelectiveLoRA

KINDS = ("none", "lora", "rank-lora", "bottleneck", "mma")
MERGEABLE_KINDS = ("lora", "rank-lora")  # folded into the base weights by ``merge_adapters``
SHAREABLE_KINDS = ("bottleneck", "mma")


class BottleneckAdapter(nn.Module):
    """``mlp(x) + gate(up(gelu(down(mlp(x)))))``: a residual bottleneck after a block's feed-forward layer."""

    wrapped = "mlp"

    def __init__(self, mlp: nn.Module, width: int, rank: int, gate: nn.Module | None = None):
        super().__init__()
        self.mlp = mlp
        self.down = nn.Linear(width, rank)
        self.up = nn.Linear(rank, width)
        nn.init.zeros_(self.up.weight)  # identity at start: the pretrained function is unchanged
        nn.init.zeros_(self.up.bias)
        self.adapter_gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(x)
        delta = self.up(F.gelu(self.down(h)))
        return h + (delta if self.adapter_gate is None else self.adapter_gate(delta))


def apply_adapter(model: nn.Module, cfg) -> nn.Module:
    """Insert the adapters named by ``cfg`` (an ``AdapterConfig``) into ``model`` in place, and freeze
    the adapted towers' base weights. ``kind="none"`` leaves the model untouched."""
    if cfg.kind == "none":
        return model
    unknown = set(cfg.towers) - {"vision", "text"}
    if unknown or not cfg.towers:
        raise ConfigError(f"model.adapter.towers must name vision and/or text, got {cfg.towers}.")
    if cfg.share and (cfg.kind not in SHAREABLE_KINDS or sorted(cfg.towers) != ["text", "vision"]):
        raise ConfigError(f"model.adapter.share shares one adapter between the vision and text towers: it needs "
                          f"kind one of {', '.join(SHAREABLE_KINDS)} and towers [vision, text]; got kind "
                          f"'{cfg.kind}', towers {cfg.towers}.")
    if cfg.kind == "lora":
        _inject_lora(model, cfg)
    elif cfg.kind == "rank-lora":
        _inject_rank_lora(model, cfg)
    elif cfg.kind in SHAREABLE_KINDS:
        _inject_mlp_adapters(model, cfg)
    else:
        raise ConfigError(f"model.adapter.kind '{cfg.kind}' is not one of: {', '.join(KINDS)}.")
    for tower in cfg.towers:  # base weights of adapted towers are frozen; adapter weights train
        for name, param in getattr(model, tower).named_parameters():
            param.requires_grad = is_adapter_parameter(name) or (cfg.train_token_embeddings
                                                                 and name.startswith("token_embedding."))
    return model


def _blocks(model: nn.Module, cfg) -> dict[str, list[nn.Module]]:
    """The vlalign transformer blocks of each adapted tower, in depth order."""
    from vlalign.models.layers import Block

    blocks = {tower: [m for m in getattr(model, tower).modules() if isinstance(m, Block)] for tower in cfg.towers}
    if not any(blocks.values()):
        raise ConfigError(f"model.adapter.kind={cfg.kind} needs vlalign transformer blocks; the "
                          f"{'/'.join(cfg.towers)} tower(s) have none (use kind=lora for Hugging Face towers).")
    return blocks


def _gate(cfg, features: int, block: nn.Module) -> GranularityGate | None:
    if cfg.gate == "none":
        return None
    width = block.ln_1.normalized_shape[0]
    return GranularityGate(features, cfg.gate, width // block.attn.heads)  # "head": the block's head width


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
    if cfg.gate != "none":
        from peft.tuners.tuners_utils import BaseTunerLayer

        for block in (b for blocks in _blocks(model, cfg).values() for b in blocks):
            for layer in (m for m in block.modules() if isinstance(m, BaseTunerLayer)):
                up = layer.lora_B["default"]
                up.gate = _gate(cfg, up.out_features, block)  # a child of lora_B: trains and saves with it
                up.register_forward_hook(_gate_output)


def _gate_output(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on peft's ``lora_B``: its output (before the alpha/r scaling, which commutes) times the gate."""
    return module.gate(output)


def _inject_rank_lora(model: nn.Module, cfg) -> None:
    wrapped = 0
    for block in (b for blocks in _blocks(model, cfg).values() for b in blocks):
        for target in cfg.targets:
            parent_name, _, child = target.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            base = getattr(parent, child, None)
            if isinstance(base, nn.Linear):
                setattr(parent, child, RankSelectiveLoRA(base, cfg.rank, cfg.alpha, cfg.sparsity,
                                                         _gate(cfg, base.out_features, block)))
                wrapped += 1
    if not wrapped:
        raise ConfigError(f"model.adapter.targets {cfg.targets} match no layer of the {'/'.join(cfg.towers)} "
                          "tower(s). vlalign towers have attn.qkv, attn.proj, mlp.fc1, mlp.fc2.")


def _inject_mlp_adapters(model: nn.Module, cfg) -> None:
    """A bottleneck or MMA adapter after every block's MLP; with ``share``, block i of the text tower reuses
    the adapter parts of block i of the vision tower (the towers must be of one width)."""
    first: dict[int, nn.Module] = {}  # depth -> the adapter whose parts the other tower shares
    for tower, blocks in _blocks(model, cfg).items():
        for depth, block in enumerate(blocks):
            width = block.ln_2.normalized_shape[0]
            gate = _gate(cfg, width, block)
            if cfg.kind == "bottleneck":
                adapter = BottleneckAdapter(block.mlp, width, cfg.rank, gate)
            else:
                adapter = MixtureOfModalityAdapter(block.mlp, width, cfg.rank, gate=gate)
            if cfg.share and depth in first:
                _share_parts(adapter, first[depth])
            first.setdefault(depth, adapter)
            block.mlp = adapter


def _share_parts(adapter: nn.Module, source: nn.Module) -> None:
    if source.down.in_features != adapter.down.in_features:
        raise ConfigError(f"model.adapter.share needs towers of one width; block widths are "
                          f"{source.down.in_features} and {adapter.down.in_features}. Set model.adapter.share=false "
                          "or use vision and text sizes of one width (vit-tiny and text-tiny are both 128).")
    for name, child in source.named_children():
        if name != source.wrapped:
            setattr(adapter, name, child)  # the same module object: one set of weights, two places


def is_adapter_parameter(name: str) -> bool:
    return ".lora_" in name or ".down." in name or ".up." in name or ".adapter_" in name


def wrapper_modules(model: nn.Module) -> dict[str, str]:
    """{module name: the attribute holding the module it wraps} for every adapter wrapper in ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            found[name] = "base_layer"
        elif hasattr(module, "wrapped"):
            found[name] = module.wrapped
    return found


def base_names(model: nn.Module) -> dict[str, str]:
    """{state-dict name: the name that weight has in the model without adapters}. Adapter weights map to
    themselves. ``model.init_from`` uses it to start an adapted model from an unadapted run."""
    wrappers = wrapper_modules(model)
    names = {}
    for key in model.state_dict():
        plain = key
        for prefix, child in wrappers.items():
            inner = f"{prefix}.{child}." if prefix else f"{child}."
            if plain.startswith(inner):
                plain = plain[: len(inner) - len(child) - 1] + plain[len(inner):]
        names[key] = plain
    return names


@torch.no_grad()
def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every LoRA update (peft's and rank-selective, gates included) into its base ``nn.Linear`` and
    drop the wrappers (in place). The merged model has the plain module names again, so it loads with
    ``adapter.kind=none``. Bottleneck and MMA adapters are not linear and stay."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            up = module.lora_B["default"]
            if hasattr(up, "gate"):  # the gate scales the update's output rows: fold it into B
                up.weight.mul_(up.gate.values()[:, None])
            module.merge()
            replacement = module.get_base_layer()
        elif isinstance(module, RankSelectiveLoRA):
            replacement = module.merged()
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    return model


def shrink_rank_importance(model: nn.Module, lr: float) -> dict[str, float]:
    """The L1 proximal step of every rank-selective LoRA (after an optimizer update of size ``lr``);
    returns the ranks still active, in all and as a fraction, for the step's log (empty without one)."""
    layers = [m for m in model.modules() if isinstance(m, RankSelectiveLoRA)]
    if not layers:
        return {}
    for layer in layers:
        layer.shrink_importance(lr)
    active = sum(layer.active_ranks() for layer in layers)
    total = sum(layer.lora_importance.numel() for layer in layers)
    return {"adapter/active_ranks": active, "adapter/active_rank_fraction": active / total}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and trainable parameters, overall and per top-level part (vision, text, heads, ...).
    A parameter shared by two places (``model.adapter.share``) is counted once, at its first place."""
    counts = {"total": 0, "trainable": 0}
    for name, param in model.named_parameters():
        part = name.split(".")[0]
        counts["total"] += param.numel()
        counts[f"{part}/total"] = counts.get(f"{part}/total", 0) + param.numel()
        if param.requires_grad:
            counts["trainable"] += param.numel()
            counts[f"{part}/trainable"] = counts.get(f"{part}/trainable", 0) + param.numel()
    return counts
