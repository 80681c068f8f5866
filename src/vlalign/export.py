"""``vlalign export``: a trained run as a directory a Hugging Face user recognises, or TorchScript towers.

``--format hf`` writes::

    config.json                 architecture + the vlalign model config (adapters merged)
    model.safetensors           weights (LoRA folded into the base layers)
    tokenizer.json              the run's tokenizer (+ tokenizer_config.json, special_tokens_map.json)
    preprocessor_config.json    image size, channels and normalisation

``vlalign.load(DIR)`` loads it back. ``--format torchscript`` writes ``image_encoder.pt`` and
``text_encoder.pt`` (traced; inputs: normalised pixels ``[B, C, S, S]``; ids and mask ``[B, L]``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlalign import __version__
from vlalign.config import RunConfig, from_dict, to_dict
from vlalign.data.tokenizer import TextTokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import CheckpointError, VlalignError
from vlalign.models import build_model
from vlalign.models.adapters import MERGEABLE_KINDS, merge_adapters

FORMATS = ("hf", "torchscript")
MODEL_TYPE = "vlalign-dual-encoder"


def export(checkpoint: str | Path, format: str, out: str | Path) -> Path:
    from vlalign.api import Aligner, load

    if format not in FORMATS:
        raise VlalignError(f"Export format '{format}' is not one of: {', '.join(FORMATS)}.")
    aligner = load(checkpoint)
    if not isinstance(aligner, Aligner):
        raise VlalignError(f"{checkpoint} is a '{aligner.config.model.arch}' run (a generative run); export writes "
                           "dual encoders (model.arch dual-encoder). The run directory itself is what `vlalign.load` "
                           "reads (copy config.yaml, tokenizer.json and checkpoints/ to move it); `vlalign chat` "
                           "and `vlalign eval --task vqa` use it.")
    out = Path(out)
    if format == "hf":
        export_hf(aligner, out)
    else:
        export_torchscript(aligner, out)
    return out


def merged_config(cfg: RunConfig) -> RunConfig:
    """The config of the merged model: LoRA (and its gate) is folded into the weights, so the result has no adapter."""
    cfg = copy.deepcopy(cfg)
    if cfg.model.adapter.kind in MERGEABLE_KINDS:
        cfg.model.adapter.kind, cfg.model.adapter.gate, cfg.model.adapter.sparsity = "none", "none", 0.0
    return cfg


def export_hf(aligner, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = merge_adapters(copy.deepcopy(aligner.model))
    cfg = merged_config(aligner.config)
    config = {
        "architectures": ["VlalignDualEncoder"],
        "model_type": MODEL_TYPE,
        "vlalign_version": __version__,
        "projection_dim": cfg.model.embed_dim,
        "image_size": cfg.data.image_size,
        "context_length": cfg.data.context_length,
        "vocab_size": aligner.tokenizer.vocab_size,
        "trained_steps": aligner.step,
        "vlalign": to_dict(cfg),
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    aligner.tokenizer.save(out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.data.context_length,
        "padding_side": "right"}, indent=1))
    tok = aligner.tokenizer.tokenizer
    (out / "special_tokens_map.json").write_text(json.dumps({
        "pad_token": tok.id_to_token(aligner.tokenizer.pad_id), "eos_token": tok.id_to_token(aligner.tokenizer.eos_id)}))
    t = aligner.transform
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_size": t.image_size, "in_channels": t.in_channels, "image_mean": t.mean, "image_std": t.std,
        "uint8_scaling": "x / 255 * 2 - 1 when image_mean is null"}, indent=1))


def is_hf_export(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and (path / "model.safetensors").is_file() and \
        json.loads(config.read_text()).get("model_type") == MODEL_TYPE


def load_hf_export(path: str | Path):
    """An ``export_hf`` directory -> ``vlalign.api.Aligner``."""
    from vlalign.api import Aligner

    path = Path(path)
    if not is_hf_export(path):
        raise CheckpointError(f"{path} is not a vlalign Hugging Face-style export (config.json with "
                              f"model_type={MODEL_TYPE} and model.safetensors).")
    config = json.loads((path / "config.json").read_text())
    cfg = from_dict(RunConfig, config["vlalign"], str(path / "config.json"))
    tokenizer = TextTokenizer.load(path / "tokenizer.json")
    model = build_model(cfg.model, cfg.data.image_size, tokenizer.vocab_size, cfg.data.context_length)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model.eval()
    pre = json.loads((path / "preprocessor_config.json").read_text())
    transform = ImageTransform(pre["image_size"], pre["in_channels"], pre["image_mean"], pre["image_std"])
    return Aligner(model, tokenizer, transform, cfg, path, config["trained_steps"])


class _ImageEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class _TextEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids, mask)


def export_torchscript(aligner, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = merge_adapters(copy.deepcopy(aligner.model)).eval()
    cfg = aligner.config
    pixels = torch.zeros(2, cfg.model.vision.in_channels, cfg.data.image_size, cfg.data.image_size)
    ids, mask = aligner.tokenizer(["a trace example", "another"], cfg.data.context_length)
    with torch.no_grad():
        try:
            torch.jit.trace(_ImageEncoder(model), pixels).save(str(out / "image_encoder.pt"))
            torch.jit.trace(_TextEncoder(model), (ids, mask)).save(str(out / "text_encoder.pt"))
        except Exception as err:  # tracing failures come from many layers; say which export failed
            raise VlalignError(f"TorchScript tracing of this model failed ({err}); use --format hf.") from err
    aligner.tokenizer.save(out / "tokenizer.json")
