"""``vlalign embed``: image and/or text embeddings of a whole data source, written as safetensors.

Output ``FILE`` (safetensors) holds ``image`` and/or ``text`` ``[N, E]`` float32 tensors and ``index``
``[N]`` (the source position of each row; corrupt samples are left out). Its metadata carries the
model, the data spec and the row keys; ``FILE.json`` repeats them next to it for non-Python readers.

Large sets are embedded in chunks written to ``FILE.parts/``; a rerun of the same command skips
the chunks already there, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlalign.data.sample import CorruptSample, Source
from vlalign.errors import VlalignError
from vlalign.progress import progress as progress_bar

WHAT = ("image", "text", "both")


@dataclass
class Embeddings:
    """Rows of one embedding file: ``image`` / ``text`` are [N, E] (or None), ``keys`` names each row."""

    image: torch.Tensor | None
    text: torch.Tensor | None
    index: torch.Tensor  # [N] long: positions in the source
    keys: list[str]
    captions: list[str]
    meta: dict


def embed_source(aligner, source: Source, out: str | Path, what: str = "both", batch_size: int = 256,
                 chunk_size: int = 4096, progress: bool = True, spec: str | None = None) -> Path:
    """Embed every readable sample of ``source`` with ``aligner`` into ``out``; resumable by chunk."""
    if what not in WHAT:
        raise VlalignError(f"--what must be one of {', '.join(WHAT)}, got '{what}'.")
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    signature = {"run": str(aligner.run_dir), "step": aligner.step, "data": spec or source.name, "what": what,
                 "chunk_size": chunk_size, "n": len(source)}
    if aligner.int8:  # int8 chunks must not mix with fp32 ones
        signature["int8"] = True
    _check_parts_signature(parts, signature)
    n_chunks = (len(source) + chunk_size - 1) // chunk_size
    bar = progress_bar(total=len(source), disable=not progress, desc="embed", unit="sample")
    for c in range(n_chunks):
        start, stop = c * chunk_size, min(len(source), (c + 1) * chunk_size)
        path = parts / f"chunk-{c:06d}.safetensors"
        if not path.is_file():
            _embed_chunk(aligner, source, range(start, stop), what, batch_size, path)
        bar.update(stop - start)
    bar.close()
    _merge(parts, n_chunks, out, signature)
    return out


def _check_parts_signature(parts: Path, signature: dict) -> None:
    """Chunks from a different model, data or chunking must never be mixed into this file."""
    path = parts / "signature.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != signature:
            raise VlalignError(f"{parts} holds chunks of a different embedding job ({saved}); delete it or "
                               "choose another --out.")
    else:
        path.write_text(json.dumps(signature))


def _embed_chunk(aligner, source: Source, positions: range, what: str, batch_size: int, path: Path) -> None:
    images, captions, keys, index = [], [], [], []
    for i in positions:
        try:
            sample = source[i]
        except CorruptSample:
            continue
        images.append(sample.image)
        captions.append(sample.caption)
        keys.append(sample.key)
        index.append(i)
    tensors = {"index": torch.tensor(index, dtype=torch.long)}
    if what in ("image", "both"):
        tensors["image"] = aligner.encode_image(images, batch_size).float().contiguous()
    if what in ("text", "both"):
        tensors["text"] = aligner.encode_text(captions, batch_size).float().contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"keys": json.dumps(keys), "captions": json.dumps(captions)})
    os.replace(tmp, path)  # a chunk file exists only once complete


def _merge(parts: Path, n_chunks: int, out: Path, signature: dict) -> None:
    tensors: dict[str, list[torch.Tensor]] = {}
    keys, captions = [], []
    for c in range(n_chunks):
        path = parts / f"chunk-{c:06d}.safetensors"
        for name, t in load_file(str(path)).items():
            tensors.setdefault(name, []).append(t)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        keys += json.loads(meta["keys"])
        captions += json.loads(meta["captions"])
    merged = {name: torch.cat(ts).contiguous() for name, ts in tensors.items()}
    meta = {**signature, "rows": len(keys)}
    tmp = out.with_name(out.name + ".tmp")
    save_file(merged, str(tmp), metadata={"info": json.dumps(meta), "keys": json.dumps(keys),
                                           "captions": json.dumps(captions)})
    os.replace(tmp, out)
    out.with_name(out.name + ".json").write_text(json.dumps({**meta, "keys": keys, "captions": captions}))


def load_embeddings(path: str | Path) -> Embeddings:
    path = Path(path)
    if not path.is_file():
        raise VlalignError(f"No embedding file at {path}. Write one with `vlalign embed`.")
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return Embeddings(tensors.get("image"), tensors.get("text"), tensors["index"], json.loads(meta["keys"]),
                      json.loads(meta["captions"]), json.loads(meta["info"]))
