"""Train the VQ patch tokenizer of E-ViLM's masked video modelling on frames of the training clips, before
the video model itself (the tokenizer then stays frozen; ``vlalign.models.video.MaskedVideoModelling``)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from vlalign.data.sample import Source
from vlalign.data.transforms import ImageTransform
from vlalign.models.vq import PatchVQTokenizer
from vlalign.objectives.video import vq_vae_loss

log = logging.getLogger(__name__)


def random_frames(source: Source, transform: ImageTransform, count: int, rng: np.random.Generator) -> torch.Tensor:
    """``count`` frames, each from a random clip at a random time.  # [count, C, H, W]"""
    frames = []
    for i in rng.integers(len(source), size=count):
        clip = source[int(i)].image  # [T, C, H, W]
        frames.append(clip[int(rng.integers(clip.shape[0]))])
    return transform(frames)


def pretrain_tokenizer(tokenizer: PatchVQTokenizer, source: Source, transform: ImageTransform, steps: int,
                       seed: int, batch_size: int = 64, lr: float = 2e-3) -> dict[str, float]:
    """Adam on the VQ-VAE loss for ``steps`` batches of random frames; the codebook starts at encoder outputs
    of the first batch. Returns the last step's metrics and the share of codes in use on that batch."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 101]))
    generator = torch.Generator().manual_seed(seed)
    tokenizer.requires_grad_(True)
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=lr)
    tokenizer.init_codebook(random_frames(source, transform, batch_size, rng), generator)
    metrics: dict[str, float] = {}
    for _ in range(steps):
        out = tokenizer(random_frames(source, transform, batch_size, rng))
        loss, metrics = vq_vae_loss(out)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    tokenizer.requires_grad_(False)
    metrics["vq/codes_used"] = out.codes.unique().numel() / tokenizer.num_codes
    log.info("VQ tokenizer after %d steps: %s", steps, metrics)
    return metrics
