"""What the FDT codes mean: for the most used codes, the images that weight them most and the caption
words that ground to them (FDT, Chen et al. 2023 §4.4 shows the same kind of visualisation)."""

from __future__ import annotations

import collections

import numpy as np
import torch

from vlalign.api import Aligner
from vlalign.data.specs import build_source
from vlalign.errors import ConfigError
from vlalign.eval import plots
from vlalign.eval.tasks import TaskResult, load_arrays, task
from vlalign.models.fdt import code_usage_stats

NUM_CODES_SHOWN = 8
IMAGES_PER_CODE = 6
WORDS_PER_CODE = 5


def _weights_and_text_tokens(model: Aligner, images: list[np.ndarray], captions: list[str]):
    net, device = model.model, model.device
    pixels = model.transform(images)
    image_weights = net.image_head(net.vision(pixels.to(device)))[1]["fdt_weights"].to(pixels.device)  # [N, K]
    ids, mask = model.tokenizer(captions, model.config.data.context_length)
    text = net.text(ids.to(device), mask.to(device))
    text_weights = net.text_head(text)[1]["fdt_weights"].to(ids.device)  # [N, K]
    token_scores = net.text_head.grounding.token_scores(text.tokens).to(ids.device)  # [N, L, K]
    return image_weights, text_weights, token_scores.masked_fill(~mask[..., None], float("-inf")), ids


def top_words(code: int, text_weights, token_scores, ids, tokenizer) -> list[str]:
    """Words that ground to ``code`` most often: for each caption using the code, its best-scoring token."""
    counts: collections.Counter = collections.Counter()
    for row in (text_weights[:, code] > 0).nonzero().flatten().tolist():
        best = token_scores[row, :, code].argmax().item()
        word = tokenizer.decode([ids[row, best].item()])
        if word:
            counts[word] += 1
    return [w for w, _ in counts.most_common(WORDS_PER_CODE)]


@task("fdt-codes")
def fdt_codes(model: Aligner, spec: str | None) -> TaskResult:
    """Code usage statistics and, for the most used codes, top images and top caption words."""
    if model.config.model.head != "fdt":
        raise ConfigError("The fdt-codes task needs a model trained with model.head=fdt.")
    spec = spec or model.config.data.eval
    images, captions, _, _ = load_arrays(build_source(spec), model.config.eval.retrieval_n)
    image_weights, text_weights, token_scores, ids = _weights_and_text_tokens(model, images, captions)
    usage = image_weights.sum(0) + text_weights.sum(0)  # [K] total weight per code
    shown = usage.topk(min(NUM_CODES_SHOWN, usage.numel())).indices.tolist()
    rows = []
    for code in shown:
        top_images = image_weights[:, code].topk(min(IMAGES_PER_CODE, len(images))).indices.tolist()
        rows.append((code, top_words(code, text_weights, token_scores, ids, model.tokenizer), top_images))
    stats = {k.removeprefix("fdt/"): v for k, v in code_usage_stats(image_weights, text_weights).items()}
    result = {"task": "fdt-codes", "data": spec, **stats,
              "codes": [{"code": c, "top_words": words} for c, words, _ in rows]}
    figure = plots.retrieval_grid([f"code {c}: {', '.join(words)}" for c, words, _ in rows],
                                  plots.display_images(np.stack(images)), [imgs for _, _, imgs in rows],
                                  [-1] * len(rows), title="FDT codes: top caption words and top images")
    return TaskResult([result], {"FDT codes": figure})


__all__ = ["fdt_codes", "top_words"]
