"""A vector index over the image embeddings of a data source: faiss when installed, exact torch otherwise.

The embeddings are cached under ``RUN/index/`` (keyed by the data spec and the checkpoint step), so a
second ``vlalign serve`` of the same run and images starts without re-embedding.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from vlalign.data.sample import Source
from vlalign.embed import embed_source, load_embeddings


class VectorIndex:
    """Inner-product top-k over unit-norm rows ``[N, E]`` (cosine similarity)."""

    def __init__(self, vectors: torch.Tensor):
        self.vectors = vectors.float().contiguous()  # [N, E]
        self.backend = "torch"
        self._faiss = None
        try:
            import faiss  # optional: exact inner-product search, faster for large N
        except ImportError:
            return
        self._faiss = faiss.IndexFlatIP(self.vectors.shape[1])
        self._faiss.add(self.vectors.numpy())
        self.backend = "faiss"

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """queries [Q, E] -> (scores [Q, k], row indices [Q, k]), best first."""
        k = min(k, len(self))
        if self._faiss is not None:
            scores, rows = self._faiss.search(queries.float().contiguous().numpy(), k)
            return torch.from_numpy(scores), torch.from_numpy(rows).long()
        return (queries.float() @ self.vectors.t()).topk(k, dim=1)


def cached_image_embeddings(aligner, source: Source, spec: str, progress: bool = True):
    """Image embeddings of ``source`` from the run's cache, computed on first use."""
    digest = hashlib.sha1(f"{spec}|step={aligner.step}".encode()).hexdigest()[:12]
    path = Path(aligner.run_dir) / "index" / f"images-{digest}.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        embed_source(aligner, source, path, what="image", progress=progress, spec=spec)
    return load_embeddings(path)
