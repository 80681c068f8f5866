"""Team RAS (9th ABAW, compound expression recognition; METHODS.md §4 row 52): zero-shot label matching from
several heads (there: modalities and prompt sets; here: prompt groups), combined by a multi-head probability
fusion, and compound classes built pairwise from the probabilities of their parts.

- ``zero_shot_probabilities``: one head's class probabilities, softmax of the model's scaled prompt scores.
- ``MultiHeadProbabilityFusion``: p(k) ∝ Σ_h w[h, k] · p_h(k), with w = softmax over heads of learned logits
  per (head, class), fitted on a small labelled dev set by NLL; untrained (all logits 0) it is the mean of
  the heads. [inferred: the abstract names the fusion, not its form; per-class head weights is the reading
  that lets a head count more for the classes it matches well.]
- ``pairwise_compound``: p(a, b) = p(a) · p(b), the outer product of two attribute heads (e.g. colour and
  shape), row-major over (a, b); compounds never seen together in training still get a probability from
  parts that were each seen.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vlalign.eval.zeroshot import PromptBank


def zero_shot_probabilities(encode_text, image_embeds: Tensor, class_prompts: list[list[str]], ensemble: str,
                            logit_scale: float) -> Tensor:
    """image_embeds [N, E] unit-norm -> [N, K] softmax(logit_scale · prompt scores) over the K classes."""
    scores = PromptBank(encode_text, class_prompts, ensemble).scores(image_embeds)  # [N, K]
    return (logit_scale * scores).softmax(dim=1)


class MultiHeadProbabilityFusion(nn.Module):
    """Σ_h softmax_h(logits)[h, k] · p_h[n, k], renormalised over k: [H, N, K] -> [N, K]."""

    def __init__(self, num_heads: int, num_classes: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_heads, num_classes))  # all 0: the plain mean of the heads

    def weights(self) -> Tensor:
        return self.logits.softmax(dim=0)  # [H, K], each class's weights sum to 1 over the heads

    def forward(self, probs: Tensor) -> Tensor:
        if probs.dim() != 3 or probs.shape[0] != self.logits.shape[0] or probs.shape[2] != self.logits.shape[1]:
            raise ValueError(f"expected probabilities [heads={self.logits.shape[0]}, N, classes="
                             f"{self.logits.shape[1]}], got {tuple(probs.shape)}")
        fused = (self.weights().unsqueeze(1) * probs).sum(dim=0)  # [N, K]
        return fused / fused.sum(dim=1, keepdim=True)

    def fit(self, probs: Tensor, labels: Tensor, steps: int = 200, lr: float = 0.1) -> list[float]:
        """Fit the head weights on a labelled dev set (probs [H, N, K], labels [N]) by NLL; -> the loss curve."""
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        losses = []
        for _ in range(steps):
            loss = -self(probs).gather(1, labels[:, None]).clamp_min(1e-12).log().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses


def pairwise_compound(first: Tensor, second: Tensor) -> Tensor:
    """[N, A], [N, B] probabilities -> [N, A·B] with column a·B + b = p(a)·p(b) (sums to 1 per row)."""
    if first.shape[0] != second.shape[0]:
        raise ValueError(f"the two heads score different numbers of images: {first.shape[0]} vs {second.shape[0]}")
    return (first.unsqueeze(2) * second.unsqueeze(1)).flatten(1)  # [N, A, B] -> [N, A·B]
