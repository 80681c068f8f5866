"""Which unlabelled samples to send for labelling: random, uncertainty, and PCB's class-balanced selection
(Bang et al. 2024, "Active Prompt Learning in Vision Language Models", §4).

PCB's observation: with a pre-trained VLM, an active learner that picks the most uncertain samples tends
to pick them from a few confusing classes, and the labelled set ends up imbalanced, which can be worse
than random. The VLM's own (zero-shot, later prompt-tuned) predictions give pseudo-labels for the pool
before anything is labelled; PCB picks, one sample at a time, the most informative candidate among those
pseudo-labelled as the class that is rarest so far in the labelled set (true labels of what is labelled,
pseudo-labels of what is picked this round).
"""

from __future__ import annotations

import torch

STRATEGIES = ("random", "entropy", "pcb")


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """probs [N, K] -> predictive entropy [N] (higher = more uncertain)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(1)


def select_random(candidates: torch.Tensor, budget: int, generator: torch.Generator) -> torch.Tensor:
    """``budget`` indices of ``candidates`` [C] uniformly without replacement."""
    return candidates[torch.randperm(len(candidates), generator=generator)[:budget]]


def select_uncertain(candidates: torch.Tensor, scores: torch.Tensor, budget: int) -> torch.Tensor:
    """The ``budget`` candidates of highest score (``scores`` [N] over the whole pool)."""
    return candidates[scores[candidates].argsort(descending=True, stable=True)[:budget]]


def select_class_balanced(candidates: torch.Tensor, scores: torch.Tensor, pseudo_labels: torch.Tensor,
                          labelled_counts: torch.Tensor, budget: int) -> torch.Tensor:
    """PCB: repeatedly take the class with the fewest labels so far (ties: lowest class id) among those that
    still have a candidate, and pick its highest-scoring candidate by pseudo-label. ``pseudo_labels`` [N]
    over the pool, ``labelled_counts`` [K] true-label counts of the labelled set."""
    counts = labelled_counts.clone()
    order = candidates[scores[candidates].argsort(descending=True, stable=True)]  # best first
    queues = {int(c): order[pseudo_labels[order] == c].tolist() for c in range(len(counts))}
    chosen = []
    while len(chosen) < budget and any(queues.values()):
        open_classes = [c for c in queues if queues[c]]
        c = min(open_classes, key=lambda k: (int(counts[k]), k))
        chosen.append(queues[c].pop(0))
        counts[c] += 1
    return torch.tensor(chosen, dtype=torch.long)


def select(strategy: str, candidates: torch.Tensor, probs: torch.Tensor, labelled_counts: torch.Tensor,
           budget: int, generator: torch.Generator) -> torch.Tensor:
    """One round of ``strategy`` ("random" | "entropy" | "pcb": entropy with class balancing) over the pool
    ``candidates`` [C] (indices into ``probs`` [N, K], the current model's predictions)."""
    if strategy == "random":
        return select_random(candidates, budget, generator)
    if strategy == "entropy":
        return select_uncertain(candidates, entropy(probs), budget)
    if strategy == "pcb":
        return select_class_balanced(candidates, entropy(probs), probs.argmax(1), labelled_counts, budget)
    raise ValueError(f"active-selection strategy '{strategy}' is not one of: {', '.join(STRATEGIES)}")
