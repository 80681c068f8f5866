"""Image<->text retrieval on paired data: Recall@K, mean and median rank of the true partner."""

from __future__ import annotations

import torch


def ranks_of_truth(similarity: torch.Tensor) -> torch.Tensor:
    """similarity [N, N] with the true pair on the diagonal -> [N] 1-based rank of the diagonal in each row."""
    truth = similarity.diagonal()[:, None]  # [N, 1]
    # Ties are counted against the model: a candidate scoring equal to the truth ranks above it.
    return (similarity > truth).sum(1) + (similarity == truth).sum(1)


def retrieval_metrics(image_embeds: torch.Tensor, text_embeds: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """image_embeds, text_embeds [N, E] unit-norm, row i of each is a pair."""
    sim = image_embeds @ text_embeds.t()  # [N images, N texts]
    return retrieval_metrics_from_scores(sim, sim.t(), ks)


def retrieval_metrics_from_scores(i2t: torch.Tensor, t2i: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """i2t [N images, N texts] and t2i [N texts, N images] scores with the true pairs on the diagonals
    (two matrices: FILIP's late interaction scores each direction differently)."""
    out = {"n": int(i2t.shape[0])}
    for name, ranks in (("i2t", ranks_of_truth(i2t)), ("t2i", ranks_of_truth(t2i))):
        for k in ks:
            out[f"{name}_R@{k}"] = (ranks <= k).float().mean().item()
        out[f"{name}_mean_rank"] = ranks.float().mean().item()
        out[f"{name}_median_rank"] = ranks.float().median().item()
    return out
