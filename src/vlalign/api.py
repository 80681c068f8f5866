"""``vlalign.load(run_dir)``: a trained model ready for inference, with its tokenizer and preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import yaml

from vlalign.checkpoint import latest_checkpoint, load_checkpoint
from vlalign.config import RunConfig, from_dict
from vlalign.data.tokenizer import TextTokenizer
from vlalign.data.transforms import PREPROCESS_FILE, ImageTransform
from vlalign.errors import CheckpointError
from vlalign.models import DualEncoder, build_model


@dataclass
class Aligner:
    """A loaded model. ``encode_image`` / ``encode_text`` take raw inputs and return unit-norm embeddings."""

    model: DualEncoder
    tokenizer: TextTokenizer
    transform: ImageTransform
    config: RunConfig
    run_dir: Path
    step: int

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str], batch_size: int = 512) -> torch.Tensor:
        """list of N strings -> [N, E]."""
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer(list(texts[i : i + batch_size]), self.config.data.context_length)
            out.append(self.model.encode_text(ids, mask))
        return torch.cat(out) if out else torch.empty(0, self.config.model.embed_dim)

    @torch.inference_mode()
    def encode_image(self, images: Sequence[np.ndarray] | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """``[C, H, W]`` arrays as stored (uint8 etc.), or an already-transformed float tensor -> [N, E]."""
        out = []
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            pixels = chunk if torch.is_tensor(chunk) else self.transform(list(chunk))
            out.append(self.model.encode_image(pixels))
        return torch.cat(out) if out else torch.empty(0, self.config.model.embed_dim)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return self.transform(list(images))


def load(run_dir: str | Path, checkpoint: str | Path | None = None) -> Aligner:
    """Load the newest committed checkpoint of ``run_dir`` (or the given ``checkpoint`` directory, or an
    exported Hugging Face-style directory)."""
    from vlalign.export import is_hf_export, load_hf_export

    run_dir = Path(run_dir)
    if checkpoint is None and is_hf_export(run_dir):  # a `vlalign export --format hf` directory
        return load_hf_export(run_dir)
    if (run_dir / "COMMITTED").is_file() and checkpoint is None:  # pointed at a checkpoint directory
        checkpoint, run_dir = run_dir, run_dir.parent.parent
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a vlalign run directory (no config.yaml). "
                              "Pass the directory that `vlalign train --out` wrote.")
    cfg = from_dict(RunConfig, yaml.safe_load(config_path.read_text()), str(config_path))
    checkpoint = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise CheckpointError(f"{run_dir} has no complete checkpoint under checkpoints/. Train it first.")
    tokenizer = TextTokenizer.load(run_dir / "tokenizer.json")
    model = build_model(cfg.model, cfg.data.image_size, tokenizer.vocab_size, cfg.data.context_length)
    tensors, _, state = load_checkpoint(checkpoint)
    model.load_state_dict(tensors)
    model.eval()
    transform = ImageTransform.load(run_dir / PREPROCESS_FILE)
    return Aligner(model, tokenizer, transform, cfg, run_dir, state["train_state"]["step"])
