"""``vlalign export``: a trained run as a directory a Hugging Face user recognises, or TorchScript towers.

``--format hf`` writes a real ``CLIPModel`` directory when the run's architecture is CLIP's
(``vlalign.clip_export``; ``clip_blockers`` says when). Any other run is no transformers model, and its
directory says so, naming nothing ``AutoModel`` would try::

    vlalign_config.json         architecture + the vlalign model config (adapters merged)
    model.safetensors           weights under vlalign's names (LoRA folded into the base layers)
    preprocess.json             vlalign's image transform
    tokenizer.json              the run's tokenizer (+ tokenizer_config.json: AutoTokenizer loads it)
    preprocessor_config.json    for 3-channel runs: the same preprocessing as a CLIPImageProcessor

``vlalign.load(DIR)`` loads either back. ``--format torchscript`` writes ``image_encoder.pt`` and
``text_encoder.pt`` (traced; inputs: normalised pixels ``[B, C, S, S]``; ids and mask ``[B, L]``).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlalign import __version__
from vlalign.clip_export import export_clip
from vlalign.config import RunConfig, from_dict, to_dict
from vlalign.data.tokenizer import TextTokenizer
from vlalign.data.transforms import PREPROCESS_FILE, ImageTransform
from vlalign.errors import CheckpointError, VlalignError
from vlalign.hf_files import write_image_processor, write_tokenizer
from vlalign.models import build_model
from vlalign.models.adapters import MERGEABLE_KINDS, merge_adapters
from vlalign.models.clip_arch import clip_blockers

log = logging.getLogger(__name__)

FORMATS = ("hf", "torchscript")
CONFIG_FILE = "vlalign_config.json"  # not config.json: transformers would take the directory for one of its models
ARCHITECTURE = "VlalignDualEncoder"


def export(checkpoint: str | Path, format: str, out: str | Path) -> str:
    """Export ``checkpoint`` to ``out``; returns the layout written: "clip", "vlalign" or "torchscript"."""
    from vlalign.api import Aligner, load

    if format not in FORMATS:
        raise VlalignError(f"Export format '{format}' is not one of: {', '.join(FORMATS)}.")
    aligner = load(checkpoint, device="cpu")  # exported files are written from host memory
    if not isinstance(aligner, Aligner):
        raise VlalignError(f"{checkpoint} is a '{aligner.config.model.arch}' run (a generative run); export writes "
                           "dual encoders (model.arch dual-encoder). The run directory itself is what `vlalign.load` "
                           "reads (copy config.yaml, tokenizer.json and checkpoints/ to move it); `vlalign chat` "
                           "and `vlalign eval --task vqa` use it.")
    if format == "hf":
        return export_hf(aligner, out)
    export_torchscript(aligner, Path(out))
    return "torchscript"


def merged_config(cfg: RunConfig) -> RunConfig:
    """The config of the merged model: LoRA (and its gate) is folded into the weights, so the result has no adapter."""
    cfg = copy.deepcopy(cfg)
    if cfg.model.adapter.kind in MERGEABLE_KINDS:
        cfg.model.adapter.kind, cfg.model.adapter.gate, cfg.model.adapter.sparsity = "none", "none", 0.0
    return cfg


def export_hf(aligner, out: str | Path) -> str:
    """Export as a ``CLIPModel`` directory when CLIP expresses the run, else in vlalign's own layout; returns which
    ("clip" or "vlalign")."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blockers = clip_blockers(aligner.config)
    if not blockers:
        export_clip(aligner, out)
        return "clip"
    log.info("exporting in vlalign's layout: a CLIPModel needs %s", "; ".join(blockers))
    export_vlalign(aligner, out)
    return "vlalign"


def export_vlalign(aligner, out: Path) -> None:
    model = merge_adapters(copy.deepcopy(aligner.model))
    cfg = merged_config(aligner.config)
    config = {
        "architectures": [ARCHITECTURE],
        "vlalign_version": __version__,
        "projection_dim": cfg.model.embed_dim,
        "image_size": cfg.data.image_size,
        "context_length": cfg.data.context_length,
        "vocab_size": aligner.tokenizer.vocab_size,
        "trained_steps": aligner.step,
        "vlalign": to_dict(cfg),
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    aligner.transform.save(out / PREPROCESS_FILE)
    write_tokenizer(aligner.tokenizer, out, cfg.data.context_length)
    if aligner.transform.in_channels == 3:
        write_image_processor(aligner.transform, out)


def is_vlalign_export(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / "model.safetensors").is_file()


def load_vlalign_export(path: str | Path):
    """An ``export_vlalign`` directory -> ``vlalign.api.Aligner``."""
    from vlalign.api import Aligner

    path = Path(path)
    if not is_vlalign_export(path):
        raise CheckpointError(f"{path} is not a vlalign export ({CONFIG_FILE} and model.safetensors).")
    config = json.loads((path / CONFIG_FILE).read_text())
    cfg = from_dict(RunConfig, config["vlalign"], str(path / CONFIG_FILE))
    tokenizer = TextTokenizer.load(path / "tokenizer.json")
    model = build_model(cfg.model, cfg.data.image_size, tokenizer.vocab_size, cfg.data.context_length)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model.eval()
    transform = ImageTransform.load(path / PREPROCESS_FILE)
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
