"""CLIP checkpoints from outside vlalign, named by a spec wherever a run directory is accepted:

- ``hf-clip:DIR``: a Hugging Face ``CLIPModel`` directory (config.json, weights, a CLIP tokenizer,
  preprocessor_config.json), e.g. one ``save_pretrained`` or ``vlalign export --format hf`` wrote;
- ``open-clip:FILE,activation=quick_gelu|gelu,tokenizer=DIR[,vision_heads=N,text_heads=N]``: an open_clip
  ViT CLIP state dict (``.pt``/``.bin`` or ``.safetensors``); it records neither its activation nor its
  tokenizer, so both are named (``tokenizer``: a Hugging Face CLIP directory with the same vocabulary).

``vlalign.load(spec)`` (and so ``vlalign eval --model spec``) converts one into an ``Aligner``;
``model.init_from=[spec]`` starts a run from it, the run taking its architecture, tokenizer and image
normalisation (``adopt_init``). Nothing is downloaded. See ``vlalign.models.clip_arch`` for the mapping.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path

import torch

from vlalign.config import RunConfig
from vlalign.data.clip_tokenizer import is_shifted_clip, read_clip_tokenizer
from vlalign.data.tokenizer import TextTokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import CheckpointError, ConfigError
from vlalign.models import open_clip_names
from vlalign.models.clip_arch import ClipArchitecture, adopt, from_hf_config
from vlalign.models.clip_names import Tensors, hf_to_vlalign
from vlalign.models.layers import ACTIVATIONS

HF_CLIP, OPEN_CLIP = "hf-clip:", "open-clip:"
# OpenAI's CLIP pixel statistics (of 8-bit images scaled to [0, 1]), which open_clip's ViT CLIP models use too
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def is_external(spec: str | Path) -> bool:
    return str(spec).startswith((HF_CLIP, OPEN_CLIP))


def is_hf_clip_dir(path: Path) -> bool:
    """A directory with a Hugging Face ``config.json`` of ``model_type`` "clip"."""
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "clip"


class HFClip:
    """A ``CLIPModel`` directory; read through ``transformers`` (config defaults, sharded or .bin weights)."""

    def __init__(self, directory: str):
        self.path = Path(directory).expanduser()
        if not is_hf_clip_dir(self.path):
            raise CheckpointError(f"{HF_CLIP}{directory}: not a Hugging Face CLIP directory (config.json with "
                                  "model_type \"clip\").")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def architecture(self) -> ClipArchitecture:
        from transformers import CLIPConfig

        return from_hf_config(CLIPConfig.from_pretrained(str(self.path), local_files_only=True))

    def hf_weights(self) -> Tensors:
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(str(self.path), local_files_only=True).state_dict()

    def tokenizer(self) -> TextTokenizer:
        return read_clip_tokenizer(self.path)

    def transform(self) -> ImageTransform:
        pre = self.path / "preprocessor_config.json"
        stats = json.loads(pre.read_text()) if pre.is_file() else {}
        return clip_transform(self.architecture(), stats.get("image_mean", OPENAI_MEAN),
                              stats.get("image_std", OPENAI_STD))


class OpenClip:
    """An open_clip state dict with the two facts it does not record (see the module docstring)."""

    OPTIONS = {"activation": str, "tokenizer": str, "vision_heads": int, "text_heads": int}

    def __init__(self, argument: str):
        path, *items = argument.split(",")
        options = parse_options(items, self.OPTIONS, OPEN_CLIP + argument)
        if options.get("activation") not in ACTIVATIONS or "tokenizer" not in options:
            raise ConfigError(f"{OPEN_CLIP}{argument}: name the MLP activation and the tokenizer, e.g. "
                              f"{OPEN_CLIP}{path},activation=quick_gelu,tokenizer=DIR (an open_clip state dict records "
                              "neither; OpenAI's and -quickgelu models use quick_gelu, others gelu).")
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise CheckpointError(f"{OPEN_CLIP}{argument}: {self.path} is not a file.")
        self.options = options

    @cached_property
    def state(self) -> Tensors:
        if self.path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return open_clip_names.unwrap(load_file(str(self.path)))
        return open_clip_names.unwrap(torch.load(self.path, map_location="cpu", weights_only=True, mmap=True))

    def architecture(self) -> ClipArchitecture:
        o = self.options
        return open_clip_names.architecture(self.state, o["activation"], o.get("vision_heads", 0),
                                            o.get("text_heads", 0))

    def hf_weights(self) -> Tensors:
        return open_clip_names.to_hf(self.state, self.architecture())

    def tokenizer(self) -> TextTokenizer:
        return read_clip_tokenizer(self.options["tokenizer"])

    def transform(self) -> ImageTransform:
        return clip_transform(self.architecture(), OPENAI_MEAN, OPENAI_STD)


def parse_options(items: list[str], allowed: dict[str, type], spec: str) -> dict:
    out = {}
    for item in filter(None, (part.strip() for part in items)):
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise ConfigError(f"{spec}: expected key=value with key one of {', '.join(allowed)}; got '{item}'.")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise ConfigError(f"{spec}: option '{key}' expects {allowed[key].__name__}, got '{value}'.") from None
    return out


def clip_transform(arch: ClipArchitecture, mean, std) -> ImageTransform:
    """CLIP normalises 8-bit pixels scaled to [0, 1]; ``ImageTransform`` takes statistics in stored units."""
    return ImageTransform(arch.image_size, arch.channels, [255.0 * m for m in mean], [255.0 * s for s in std])


def open_checkpoint(spec: str) -> HFClip | OpenClip:
    spec = str(spec)
    if spec.startswith(HF_CLIP):
        return HFClip(spec[len(HF_CLIP):])
    if spec.startswith(OPEN_CLIP):
        return OpenClip(spec[len(OPEN_CLIP):])
    raise ConfigError(f"'{spec}' is not a checkpoint spec ({HF_CLIP}DIR or {OPEN_CLIP}FILE,...).")


def checked_tokenizer(checkpoint: HFClip | OpenClip, arch: ClipArchitecture) -> tuple[TextTokenizer, int]:
    """The checkpoint's tokenizer and its id offset (1 when CLIP's vocabulary was shifted in), checked against
    the embedding table it must index."""
    tokenizer = checkpoint.tokenizer()
    offset = int(is_shifted_clip(tokenizer))
    if tokenizer.vocab_size - offset != arch.vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.vocab_size - offset} tokens but the text tower embeds "
                              f"{arch.vocab_size}: they do not belong together.")
    return tokenizer, offset


def converted_weights(checkpoint: HFClip | OpenClip) -> Tensors:
    """The checkpoint's weights under vlalign's names (the model ``adopt`` configures)."""
    arch = checkpoint.architecture()
    return hf_to_vlalign(checkpoint.hf_weights(), arch, checked_tokenizer(checkpoint, arch)[1])


def external_init(cfg: RunConfig) -> str | None:
    """The one checkpoint spec in ``model.init_from``, if any (two would give two architectures)."""
    specs = [s for s in cfg.model.init_from if is_external(s)]
    if len(specs) > 1:
        raise ConfigError(f"model.init_from names {len(specs)} outside checkpoints ({', '.join(specs)}); a run starts "
                          "from at most one, whose architecture it takes.")
    return specs[0] if specs else None


def adopt_init(cfg: RunConfig) -> RunConfig:
    """``cfg`` shaped as the outside checkpoint in ``model.init_from`` (unchanged without one)."""
    spec = external_init(cfg)
    if spec is None:
        return cfg
    checkpoint = open_checkpoint(spec)
    arch = checkpoint.architecture()
    return adopt(cfg, arch, checked_tokenizer(checkpoint, arch)[0].vocab_size)


def load_external(spec: str | Path):
    """A checkpoint spec -> ``vlalign.api.Aligner`` (step 0; its ``run_dir`` is the checkpoint's path)."""
    from vlalign.api import Aligner
    from vlalign.models import build_model

    checkpoint = open_checkpoint(str(spec))
    arch = checkpoint.architecture()
    tokenizer, offset = checked_tokenizer(checkpoint, arch)
    cfg = adopt(RunConfig(name=str(spec)), arch, tokenizer.vocab_size)
    model = build_model(cfg.model, cfg.data.image_size, tokenizer.vocab_size, cfg.data.context_length)
    missing, unexpected = model.load_state_dict(hf_to_vlalign(checkpoint.hf_weights(), arch, offset), strict=False)
    if set(missing) != {"logit_bias"} or unexpected:  # CLIP has no sigmoid-loss bias; everything else must match
        raise CheckpointError(f"{spec}: converted weights do not fit the model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}).")
    return Aligner(model.eval(), tokenizer, checkpoint.transform(), cfg, checkpoint.path, 0)
