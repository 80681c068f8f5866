"""Zero-shot classification: each class is the mean embedding of its prompts (a prompt ensemble,
Radford et al. 2021 §3.1.4); an image takes the class whose embedding is most similar."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_embeddings(encode_text, class_prompts: list[list[str]]) -> torch.Tensor:
    """K lists of prompts -> [K, E] unit-norm class embeddings (prompt ensembling)."""
    flat = [p for prompts in class_prompts for p in prompts]
    embeds = encode_text(flat)  # [sum of prompts, E]
    out, start = [], 0
    for prompts in class_prompts:
        out.append(embeds[start : start + len(prompts)].mean(0))
        start += len(prompts)
    return F.normalize(torch.stack(out), dim=-1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """logits [N, K], labels [N] -> top-1, top-5, mean per-class recall and the confusion matrix."""
    pred = logits.argmax(1)
    top5 = logits.topk(min(5, num_classes), dim=1).indices
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    present = confusion.sum(1) > 0
    recall = confusion.diag()[present].float() / confusion.sum(1)[present].float()
    return {
        "top1": (pred == labels).float().mean().item(),
        "top5": (top5 == labels[:, None]).any(1).float().mean().item(),
        "mean_per_class_recall": recall.mean().item(),
        "n": int(labels.numel()),
        "confusion": confusion.numpy(),
    }


def zeroshot_classify(image_embeds: torch.Tensor, class_embeds: torch.Tensor, labels: torch.Tensor) -> dict:
    """image_embeds [N, E], class_embeds [K, E] (both unit-norm), labels [N] in 0..K-1."""
    return classification_metrics(image_embeds @ class_embeds.t(), labels, class_embeds.shape[0])

