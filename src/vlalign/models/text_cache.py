"""Text embeddings from a frozen pretrained encoder, computed once and kept in a file.

GPT4Image (Ding et al. 2023, "GPT4Image: Large Pre-trained Models Help Vision Models Learn Better on
Perception Task", §3) feeds every training image's description once through a frozen text encoder
and trains the vision model against those fixed vectors; nothing of the text side changes during
training, so the embeddings are computed before the first step and read from a table afterwards.
The encoder is a local Hugging Face model (``hf:PATH`` or a shipped name such as
``hf:all-MiniLM-L6-v2``), mean-pooled over real tokens and L2-normalised, as sentence-transformers
uses MiniLM.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlalign.errors import ConfigError
from vlalign.models.hf_text import HFTextTower, is_hf_tower, resolve_hf_path

MAX_TOKENS = 128  # descriptions longer than this are truncated (MiniLM was trained on 128-token inputs)


def texts_digest(encoder: str, texts: list[str]) -> str:
    """Identifies a table: the encoder and every text, in order."""
    h = hashlib.sha256(encoder.encode())
    for text in texts:
        h.update(b"\0" + text.encode())
    return h.hexdigest()


@torch.inference_mode()
def embed_texts(encoder: str, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Texts -> [N, D] unit-norm embeddings of the frozen encoder ``hf:...``."""
    from tokenizers import Tokenizer

    from vlalign.data.tokenizer import TextTokenizer

    if not is_hf_tower(encoder):
        raise ConfigError(f"The description encoder must be a local Hugging Face model, hf:PATH or "
                          f"hf:all-MiniLM-L6-v2; got '{encoder}'.")
    path = resolve_hf_path(encoder)
    tower = HFTextTower(path, locked=True).eval()
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    raw.no_padding()
    raw.no_truncation()
    tokenizer = TextTokenizer(raw)
    rows = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer(texts[start : start + batch_size], MAX_TOKENS)
        used = int(mask.sum(1).max())  # drop the columns that are padding in every row
        rows.append(torch.nn.functional.normalize(tower(ids[:, :used], mask[:, :used]).pooled, dim=-1))
    return torch.cat(rows) if rows else torch.empty(0, tower.width)


def cached_text_embeddings(encoder: str, texts: list[str], path: str | Path) -> torch.Tensor:
    """``embed_texts`` of ``texts``, read from ``path`` when it holds exactly these texts, else computed and
    written there (safetensors, the digest in its metadata). -> [N, D] float32, row i for ``texts[i]``."""
    path = Path(path)
    digest = texts_digest(encoder, texts)
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("digest") == digest:
                return load_file(str(path))["embeddings"]
    embeddings = embed_texts(encoder, texts).float().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file({"embeddings": embeddings}, str(partial), metadata={"digest": digest, "encoder": encoder})
    partial.replace(path)  # atomic: a crash never leaves a half-written table behind
    return embeddings
