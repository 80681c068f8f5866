"""Typed run configuration: nested dataclasses, YAML load/dump, ``--set key.path=value`` overrides.

Every field has a type, and every value is checked against it at load time: an unknown key, a
wrong type or a bad value is a ``ConfigError`` that names the key path and the file it came from
(with a suggestion for a likely typo). A recipe (``vlalign.recipes``) is a function returning a
``RunConfig``; YAML files and overrides are applied on top of it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlalign.data.negatives import NEGATIVE_KINDS
from vlalign.errors import ConfigError


@dataclass(kw_only=True)
class DataConfig:
    train: str = "shapes:n=20000,seed=0"  # a data spec (see vlalign.data.specs; `vlalign data sources`)
    eval: str = "shapes:n=1000,seed=1"  # held-out pairs for retrieval
    image_size: int = 64
    batch_size: int = 128
    num_workers: int = 0
    context_length: int = 32  # text tokens, including BOS/EOS
    fraction: float = 1.0  # use this fraction of the training source (deterministic subset)
    max_skip_fraction: float = 0.01  # fail the run when more samples than this are corrupt
    cache_dir: str = ""  # if set: decode 8-bit images once at image_size into a memory-mapped cache here
    order: str = "exact"  # "exact": order is a function of (seed, epoch, rank, position)
    # "auto": the source's per-channel statistics if it has them, else 8-bit images to [-1, 1];
    # "per_channel": mean/std of each channel measured on the first training images (multi-channel data)
    normalization: str = "auto"


@dataclass(kw_only=True)
class VisionConfig:
    size: str = "vit-tiny"  # a row of vlalign.models.registry.VISION_SIZES
    patch_size: int = 8
    in_channels: int = 3
    patch_embed: str = "standard"  # "standard" | "channel" (ChannelViT) | "conv" (convolutional stem)
    pool: str = "cls"  # "cls" | "mean"
    channel_sampling: str = "none"  # "none" | "hcs" (Hierarchical Channel Sampling, training only)
    channel_sampling_per: str = "batch"  # "batch" (the reference) | "sample"


@dataclass(kw_only=True)
class TextConfig:
    size: str = "text-tiny"  # a row of vlalign.models.registry.TEXT_SIZES
    vocab_size: int = 1024  # BPE tokenizer trained on the training captions
    pool: str = "eot"  # "eot" (causal mask, last token, as CLIP) | "mean" (bidirectional, mean of tokens)
    tower: str = "vlalign"  # "vlalign" (trained from scratch) | "hf:PATH" (a local Hugging Face encoder)
    locked: bool = False  # freeze the text tower (LiT, Zhai et al. 2022): train the image side into its space


@dataclass(kw_only=True)
class AdapterConfig:
    kind: str = "none"  # "none" | "lora" (through peft) | "bottleneck" (see vlalign.models.adapters)
    towers: list[str] = field(default_factory=lambda: ["vision", "text"])  # adapted towers; their base is frozen
    rank: int = 8  # LoRA rank r, or the bottleneck width
    alpha: float = 16.0  # LoRA scale alpha (the update is scaled by alpha / r)
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.proj"])  # LoRA: module-name suffixes


@dataclass(kw_only=True)
class FDTConfig:
    """Finite Discrete Tokens head (METHODS.md §2), used when ``model.head`` is "fdt"."""

    num_codes: int = 1024  # K; the paper uses 16384 at ViT-B scale
    code_dim: int = 128  # the FDT feature width (replaces model.embed_dim)
    pool: str = "max"  # over tokens: "max" (paper) | "mean" | "sum"
    activation: str = "sparsemax"  # "sparsemax" (paper) | "softmax"
    temperature: float = 30.0  # grounding-score temperature; 30 measured for small models (see models/fdt.py)
    pad_mode: str = "neg_inf"  # "neg_inf": padded text tokens are inert | "zero": the reference's multiplicative mask


@dataclass(kw_only=True)
class VLMConfig:
    """The generative side (archs "lm" and "vlm"): ViT -> connector -> causal LM (LLaVA; METHODS.md §3)."""

    decoder: str = "lm-mini"  # a row of vlalign.models.registry.DECODER_SIZES
    connector: str = "mlp"  # "linear" (LLaVA) | "mlp" (LLaVA-1.5: Linear-GELU-Linear)
    # Top-level modules whose weights stay fixed: "vision", "connector", "decoder".
    # The default is LLaVA stage 1 (alignment): only the connector trains.
    freeze: list[str] = field(default_factory=lambda: ["vision", "decoder"])


@dataclass(kw_only=True)
class ModelConfig:
    arch: str = "dual-encoder"  # "dual-encoder" (CLIP-style) | "lm" (text-only causal LM) | "vlm" (LLaVA-style)
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)
    head: str = "projection"  # "projection" (CLIP: linear map of the pooled feature) | "fdt"
    fdt: FDTConfig = field(default_factory=FDTConfig)
    embed_dim: int = 128
    init_temperature: float = 0.07  # CLIP: logit scale starts at 1/0.07
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    num_classes: int = 0  # > 0 adds a linear classifier on the pooled image feature (objective "supervised")
    # Run directories whose newest checkpoint initialises this model, in order: every weight whose
    # name and shape match is copied (e.g. a CLIP run's `vision.*`, a language model's `decoder.*`).
    init_from: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class ObjectiveConfig:
    # "clip" (softmax InfoNCE) | "siglip" (pairwise sigmoid) | "fdt" (InfoNCE on FDT features)
    # | "supervised" (class labels) | "generative" (next-token loss on targets)
    # | "cgvlm" (generative + patch-token contrastive, METHODS.md §3.3)
    name: str = "clip"
    max_logit_scale: float = 100.0  # CLIP clamps exp(logit_scale) at 100
    contrastive_weight: float = 1.0  # cgvlm: λ in L = L_gen + λ·L_con (unknown in the paper; 0 = captioning only)
    pool: str = "mean"  # cgvlm: pooling of the projected patches, "mean" | "max"
    # clip/siglip/fdt: word-swap hard-negative captions as extra text negatives (NegCLIP/SVLC), any of
    # "colour", "size", "shape", "relation" (vlalign.data.negatives); [] = none
    hard_negatives: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    # AdamW kernel: "auto" (fused where torch has a fused kernel for every parameter, else foreach),
    # "fused" (one kernel over all tensors), "foreach" (multi-tensor ops) or "for-loop" (one parameter at a time)
    implementation: str = "auto"


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 600
    seed: int = 0
    threads: int = 0  # torch threads; 0 = all cores
    log_every: int = 10
    checkpoint_every: int = 200
    keep_last_k: int = 2
    deterministic: bool = True
    nonfinite_policy: str = "error"  # "error" | "skip"
    max_consecutive_nonfinite: int = 3
    accum_steps: int = 1  # micro-batches per step (GradCache: exact for contrastive losses)
    parallel: str = "replicate"  # multi-process: "replicate" (all-reduce gradients) | "fsdp" (FSDP2 sharding)
    # Matmul precision of forward and backward (autocast; weights, optimizer state and the loss stay fp32):
    # "fp32" | "bf16" | "auto" (bf16 only where a short probe measures bf16 matmuls faster than fp32 on this
    # device, cached per machine; CPUs without native bf16 run it many times slower, so they get fp32)
    precision: str = "auto"
    grad_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute
    compile: bool = False  # torch.compile the model (inductor); the first steps pay the compilation (minutes on a CPU)


@dataclass(kw_only=True)
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["zeroshot", "retrieval", "compositional"])
    zeroshot_n: int = 1000  # single-object images for zero-shot classification
    retrieval_n: int = 1000
    vqa_n: int = 1000  # held-out questions for the vqa task
    caption_n: int = 200  # held-out images for the caption task (and the alignment diagnostic)
    batch_size: int = 256


@dataclass(kw_only=True)
class RunConfig:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Choices checked at load time, so a typo fails before any work is done.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.order": ("exact",),
    "data.normalization": ("auto", "per_channel"),
    "model.vision.patch_embed": ("standard", "channel", "conv"),
    "model.arch": ("dual-encoder", "lm", "vlm"),
    "model.vision.pool": ("cls", "mean"),
    "model.vision.channel_sampling": ("none", "hcs"),
    "model.vision.channel_sampling_per": ("batch", "sample"),
    "model.vlm.connector": ("linear", "mlp"),
    "model.text.pool": ("eot", "mean"),
    "model.head": ("projection", "fdt"),
    "model.fdt.pool": ("max", "mean", "sum"),
    "model.fdt.activation": ("sparsemax", "softmax"),
    "model.fdt.pad_mode": ("neg_inf", "zero"),
    "objective.name": ("clip", "siglip", "fdt", "supervised", "generative", "cgvlm"),
    "objective.pool": ("mean", "max"),
    "model.adapter.kind": ("none", "lora", "bottleneck"),
    "train.nonfinite_policy": ("error", "skip"),
    "train.parallel": ("replicate", "fsdp"),
    "train.precision": ("fp32", "bf16", "auto"),
    "optim.implementation": ("auto", "fused", "foreach", "for-loop"),
}

# Objectives that train a causal LM; every other objective trains the dual encoder.
GENERATIVE_OBJECTIVES = {"lm": ("generative",), "vlm": ("generative", "cgvlm")}
FREEZABLE_MODULES = ("vision", "connector", "decoder")

# Fields that change the shape of a saved tensor or the meaning of a token: resuming with a
# different value is refused (checked by vlalign.train.resume).
STRUCTURAL_FIELDS = (
    "model",
    "data.image_size",
    "data.context_length",
    "data.batch_size",
)


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with validation


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any], source: str = "<dict>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; every key and value is checked against the field types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(prefix, source)}: expected a mapping of keys, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"Unknown config key '{path}' in {source}.{_suggest(key, fields)}")
        kwargs[key] = _coerce(hints[key], value, path, source)
    cfg = cls(**kwargs)
    return cfg


def validate(cfg: RunConfig, source: str = "<config>") -> RunConfig:
    for path, allowed in CHOICES.items():
        value = get_path(cfg, path)
        if value not in allowed:
            raise ConfigError(
                f"Config key '{path}' in {source} is '{value}', which is not one of: {', '.join(allowed)}."
            )
    positive = ("data.image_size", "data.batch_size", "data.context_length", "train.steps", "model.embed_dim",
                "model.vision.patch_size", "model.vision.in_channels", "model.text.vocab_size", "train.accum_steps",
                "train.log_every", "train.checkpoint_every")
    for path in positive:
        if get_path(cfg, path) <= 0:
            raise ConfigError(f"Config key '{path}' in {source} must be positive, got {get_path(cfg, path)}.")
    if cfg.data.image_size % cfg.model.vision.patch_size:
        raise ConfigError(
            f"In {source}: data.image_size ({cfg.data.image_size}) must be a multiple of "
            f"model.vision.patch_size ({cfg.model.vision.patch_size})."
        )
    if cfg.model.num_classes < 0:
        raise ConfigError(f"Config key 'model.num_classes' in {source} must be >= 0, got {cfg.model.num_classes}.")
    if cfg.objective.name == "supervised" and cfg.model.num_classes == 0:
        raise ConfigError(f"In {source}: objective.name=supervised needs a classification head; set model.num_classes "
                          "to the number of classes of the training data.")
    if cfg.data.batch_size % cfg.train.accum_steps:
        raise ConfigError(f"In {source}: data.batch_size ({cfg.data.batch_size}) must be a multiple of "
                          f"train.accum_steps ({cfg.train.accum_steps}).")
    _validate_arch(cfg, source)
    for kind in cfg.objective.hard_negatives:
        if kind not in NEGATIVE_KINDS:
            raise ConfigError(f"Config key 'objective.hard_negatives' in {source} has '{kind}', which is not one of: "
                              f"{', '.join(NEGATIVE_KINDS)}.")
    if cfg.objective.hard_negatives and cfg.objective.name not in ("clip", "siglip", "fdt"):
        raise ConfigError(f"In {source}: objective.hard_negatives needs a contrastive objective (clip, siglip, fdt), "
                          f"not '{cfg.objective.name}'.")
    if not 0 < cfg.data.fraction <= 1:
        raise ConfigError(f"Config key 'data.fraction' in {source} must be in (0, 1], got {cfg.data.fraction}.")
    return cfg


def _validate_arch(cfg: RunConfig, source: str) -> None:
    arch, objective = cfg.model.arch, cfg.objective.name
    generative = {name for names in GENERATIVE_OBJECTIVES.values() for name in names}
    allowed = GENERATIVE_OBJECTIVES.get(arch)
    if allowed is not None and objective not in allowed:
        raise ConfigError(f"In {source}: model.arch '{arch}' trains with objective.name one of "
                          f"{', '.join(allowed)}, got '{objective}'.")
    if allowed is None and objective in generative:
        raise ConfigError(f"In {source}: objective.name '{objective}' trains a language model; "
                          "set model.arch to 'vlm' (or 'lm' for the generative objective).")
    if allowed is not None:
        dual_only = {"model.head": "projection", "model.adapter.kind": "none", "model.text.tower": "vlalign",
                     "model.num_classes": 0}
        for path, default in dual_only.items():
            if get_path(cfg, path) != default:
                raise ConfigError(f"In {source}: {path} '{get_path(cfg, path)}' applies to the dual encoder only; "
                                  f"model.arch '{arch}' would ignore it. Leave it at '{default}'.")
    unknown = [name for name in cfg.model.vlm.freeze if name not in FREEZABLE_MODULES]
    if unknown:
        raise ConfigError(f"Config key 'model.vlm.freeze' in {source} names '{unknown[0]}'; "
                          f"freezable modules are: {', '.join(FREEZABLE_MODULES)}.")
    if cfg.objective.contrastive_weight < 0:
        raise ConfigError(f"Config key 'objective.contrastive_weight' in {source} must be >= 0, "
                          f"got {cfg.objective.contrastive_weight}.")


def _coerce(tp: Any, value: Any, path: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, prefix=f"{path}.")
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and type(None) in typing.get_args(tp):
            return None
        for option in options:
            try:
                return _coerce(option, value, path, source)
            except ConfigError:
                continue
        raise ConfigError(f"Config key '{path}' in {source} has the wrong type: {value!r}.")
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if isinstance(value, str):  # --set data.holdout=a,b is a list of two
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"Config key '{path}' in {source} expects a list, got {value!r}.")
        return [_coerce(item_type, v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"Config key '{path}' in {source} expects true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"Config key '{path}' in {source} expects an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"Config key '{path}' in {source} expects a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"Config key '{path}' in {source} expects text, got {value!r}.")
    raise ConfigError(f"Config key '{path}' in {source}: unsupported type {tp}.")


def _suggest(key: str, fields: Any) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1)
    valid = ", ".join(fields)
    return (f" Did you mean '{close[0]}'?" if close else "") + f" Valid keys here: {valid}."


def _where(prefix: str, source: str) -> str:
    return f"'{prefix.rstrip('.')}' in {source}" if prefix else source


# ---------------------------------------------------------------------------------------------
# paths, overrides, YAML


def get_path(cfg: Any, path: str) -> Any:
    value = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def apply_overrides(cfg: RunConfig, overrides: list[str], source: str = "--set") -> RunConfig:
    """Apply ``key.path=value`` strings; values are parsed as YAML scalars (``1e-3``, ``true``, ``[a, b]``)."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source} {item!r}: expected key.path=value, e.g. --set optim.lr=3e-4.")
        path, raw = item.split("=", 1)
        path = path.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = path.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                keys = list(node) if isinstance(node, dict) else []
                where = ".".join(parts[:i]) or "the top level"
                raise ConfigError(
                    f"Unknown config key '{path}' in {source} {item!r} (no '{part}' under {where})."
                    + (_suggest(part, keys) if keys else "")
                )
            if i == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise ConfigError(f"{source} {item!r}: '{path}' is a section; set one of its keys instead.")
                node[part] = value
            else:
                node = node[part]
    return validate(from_dict(RunConfig, data, source), source)


def merge_dict(cfg: RunConfig, data: dict[str, Any], source: str) -> RunConfig:
    """Overlay a (partial) nested mapping, e.g. a YAML file, on ``cfg``."""
    base = to_dict(cfg)

    def overlay(dst: dict, src: Any, prefix: str) -> None:
        if not isinstance(src, dict):
            raise ConfigError(f"{_where(prefix, source)}: expected a mapping, got {src!r}.")
        for key, value in src.items():
            path = f"{prefix}{key}"
            if key not in dst:
                raise ConfigError(f"Unknown config key '{path}' in {source}.{_suggest(str(key), dst)}")
            if isinstance(dst[key], dict) and isinstance(value, dict):
                overlay(dst[key], value, f"{path}.")
            else:
                dst[key] = value

    overlay(base, data, "")
    return validate(from_dict(RunConfig, base, source), source)


def load_yaml(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}.") from None
    return merge_dict(base or RunConfig(), data, str(path))


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Field-by-field differences between two nested config dicts, as 'key: old -> new' lines."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += diff(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return lines
