"""What the server does, without HTTP: text search over indexed images, zero-shot labels for an upload,
and the PNG of an indexed image. Every request error is a ``RequestError`` carrying its HTTP status."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vlalign.data.sample import Source
from vlalign.errors import VlalignError
from vlalign.serve.index import VectorIndex, cached_image_embeddings

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding
MAX_K = 100
MAX_LABELS = 64


class RequestError(VlalignError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class SearchService:
    def __init__(self, aligner, source: Source, spec: str, progress: bool = True):
        self.aligner = aligner
        self.source = source
        self.embeddings = cached_image_embeddings(aligner, source, spec, progress)
        self.index = VectorIndex(self.embeddings.image)
        self.spec = spec

    def health(self) -> dict:
        return {"status": "ok", "images": len(self.index), "backend": self.index.backend,
                "run": str(self.aligner.run_dir), "step": self.aligner.step, "data": self.spec}

    def search(self, query: str, k: int = 8) -> list[dict]:
        """Top-``k`` indexed images for a text query: id (index row), key, caption, cosine score."""
        query = (query or "").strip()
        if not query:
            raise RequestError(400, "The query is empty: pass ?q=some+text.")
        if not 1 <= k <= MAX_K:
            raise RequestError(400, f"k must be between 1 and {MAX_K}, got {k}.")
        scores, rows = self.index.search(self.aligner.encode_text([query]), k)
        return [{"id": int(r), "key": self.embeddings.keys[r], "caption": self.embeddings.captions[r],
                 "score": float(s)} for s, r in zip(scores[0].tolist(), rows[0].tolist())]

    def classify(self, data: bytes, labels: list[str]) -> list[dict]:
        """Zero-shot probabilities of ``labels`` for an uploaded image, most likely first."""
        labels = [label.strip() for label in labels if label.strip()]
        if not labels:
            raise RequestError(400, "Give at least one label, e.g. ?labels=red+circle,blue+square.")
        if len(labels) > MAX_LABELS:
            raise RequestError(400, f"At most {MAX_LABELS} labels, got {len(labels)}.")
        image = decode_upload(data, self.aligner.config.model.vision.in_channels)
        image_embed = self.aligner.encode_image([image])  # [1, E]
        text_embeds = self.aligner.encode_text(labels)  # [K, E]
        with torch.inference_mode():
            logits = self.aligner.model.logit_scale.exp().item() * image_embed @ text_embeds.t()  # [1, K]
        probs = logits.softmax(-1)[0].tolist()
        ranked = sorted(zip(labels, probs), key=lambda lp: -lp[1])
        return [{"label": label, "probability": p} for label, p in ranked]

    def image_png(self, row: int) -> bytes:
        """The PNG of indexed row ``row``; only rows of the index exist (no paths from the client)."""
        if not 0 <= row < len(self.index):
            raise RequestError(404, f"No indexed image with id {row}; ids are 0..{len(self.index) - 1}.")
        sample = self.source[int(self.embeddings.index[row])]
        buf = io.BytesIO()
        Image.fromarray(displayable(sample.image)).save(buf, format="PNG")
        return buf.getvalue()


def decode_upload(data: bytes, channels: int) -> np.ndarray:
    """Uploaded bytes -> [C, H, W] uint8, or a 413/415 ``RequestError``."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise RequestError(413, f"The upload is {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES}.")
    if channels not in (1, 3):
        raise RequestError(415, f"This model takes {channels}-channel images; uploads work for 1 or 3 channels.")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise RequestError(413, f"The image is {image.width}x{image.height}; at most {MAX_PIXELS} pixels.")
            pixels = np.asarray(image.convert("RGB" if channels == 3 else "L"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise RequestError(415, "The upload is not an image Pillow can read (send PNG, JPEG, ...).") from None
    return pixels.transpose(2, 0, 1).copy() if pixels.ndim == 3 else pixels[None].copy()


def displayable(image: np.ndarray) -> np.ndarray:
    """[C, H, W] of any dtype -> [H, W] or [H, W, 3] uint8 (first three channels, min-max scaled if not 8-bit)."""
    x = image[:3] if image.shape[0] >= 3 else image[:1]
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        lo, hi = float(x.min()), float(x.max())
        x = ((x - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
    return x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)

