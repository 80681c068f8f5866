"""A short training loop for VL-GPT's interleaved decoder (``vlalign.models.interleaved``) on random documents
of (caption, frozen image embedding) pairs. The images' embeddings are computed once by a frozen encoder, as
VL-GPT's image tokenizer is frozen while its transformer trains."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vlalign.data.interleaved import document_batch
from vlalign.models.interleaved import InterleavedLM
from vlalign.objectives.interleaved import InterleavedLossConfig, interleaved_loss


def fit_interleaved(model: InterleavedLM, caption_ids: list[list[int]], image_embeds: Tensor,
                    specials: dict[str, int], steps: int, batch_size: int = 32, pairs_per_document: int = 2,
                    lr: float = 2e-3, loss: InterleavedLossConfig | None = None, seed: int = 0) -> list[dict]:
    """AdamW with a linear warm-up over the first 10% of ``steps``; -> the metrics of every step."""
    loss = loss or InterleavedLossConfig()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    specials_not_words = (specials["bos"], specials["pad"])
    history = []
    model.train()
    for _ in range(steps):
        batch = document_batch(rng, caption_ids, image_embeds, batch_size, pairs_per_document, specials)
        out = model(batch["ids"], batch["mask"], batch["image_embeds"])
        value, metrics = interleaved_loss(out, batch["ids"], batch["mask"], batch["image_embeds"], specials["image"],
                                          specials_not_words, loss)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.append(metrics)
    return history
