"""Data reduction by clustering (TL;DR, Wang et al. 2023, arXiv 2305.20087; METHODS.md §4 row 46):
keep a representative fraction of the training pairs. ``vlalign data reduce SRC --checkpoint RUN
--keep F --to DIR``.

TL;DR clusters the pairs with a codebook-based captioner's features and keeps the samples nearest
each cluster's centre; here the features are a trained dual encoder's (``vlalign.load``) image and
caption embeddings, concatenated (each pair one point; both halves unit-norm), clustered by k-means
(k-means++ seeding, Lloyd iterations, written here). Each cluster keeps ``fraction`` of its members
(largest remainders settle the rounding, so the total is ``round(fraction * N)``), the ones closest to
its centre first: dense regions of near-duplicates shrink most in absolute terms while every mode of
the data stays. TL;DR's second step, regenerating captions, is not done here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from vlalign.curate.similarity_filter import Selection, readable_batches
from vlalign.data.convert import ConvertReport, convert
from vlalign.data.sample import Source
from vlalign.errors import DataError

SUMMARY_FILE = "reduce.json"


@dataclass
class KMeans:
    centroids: torch.Tensor  # [K, D]
    assignment: torch.Tensor  # [N] cluster of each point
    inertia: float  # sum of squared distances of the points to their centroids


def kmeans(points: torch.Tensor, k: int, iterations: int = 50, seed: int = 0) -> KMeans:
    """Lloyd's k-means on ``points`` [N, D] with k-means++ seeding (Arthur & Vassilvitskii 2007).
    Deterministic for a seed; an emptied cluster is re-seeded at the point farthest from its centroid."""
    n = points.shape[0]
    if not 1 <= k <= n:
        raise DataError(f"k-means needs 1 <= k <= the number of points ({n}), got k={k}.")
    points = points.double()
    g = torch.Generator().manual_seed(seed)
    centroids = points[torch.randint(n, (1,), generator=g)]  # [1, D]
    nearest = torch.cdist(points, centroids).squeeze(1) ** 2  # [N] squared distance to the closest centroid
    for _ in range(1, k):  # k-means++: the next centre drawn with probability proportional to nearest
        weights = nearest if nearest.sum() > 0 else torch.ones(n, dtype=points.dtype)
        pick = torch.multinomial(weights, 1, generator=g)
        centroids = torch.cat([centroids, points[pick]])
        nearest = torch.minimum(nearest, ((points - points[pick]) ** 2).sum(1))
    assignment = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iterations):
        distances = torch.cdist(points, centroids)  # [N, K]
        new = distances.argmin(1)
        if torch.equal(new, assignment):
            break
        assignment = new
        for c in range(k):
            members = assignment == c
            if members.any():
                centroids[c] = points[members].mean(0)
            else:  # re-seed at the worst-served point
                far = distances.gather(1, assignment[:, None]).squeeze(1).argmax()
                centroids[c] = points[far]
    inertia = float(((points - centroids[assignment]) ** 2).sum())
    return KMeans(centroids.float(), assignment, inertia)


def representative_subset(points: torch.Tensor, fraction: float, num_clusters: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``round(fraction * N)`` points: from each k-means cluster its share of the kept
    total (largest remainders), nearest to the centroid first."""
    if not 0 < fraction <= 1:
        raise DataError(f"The fraction to keep must be in (0, 1], got {fraction}.")
    n = points.shape[0]
    clusters = kmeans(points, min(num_clusters, n), seed=seed)
    sizes = torch.bincount(clusters.assignment, minlength=clusters.centroids.shape[0]).tolist()
    quotas = _largest_remainders(sizes, round(fraction * n))
    distance = (points.double() - clusters.centroids.double()[clusters.assignment]).norm(dim=1)  # [N]
    kept = []
    for c, quota in enumerate(quotas):
        members = (clusters.assignment == c).nonzero().squeeze(1)
        order = distance[members].argsort(stable=True)
        kept.append(members[order[:quota]])
    return torch.cat(kept).sort().values


def _largest_remainders(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` over groups in proportion to ``sizes`` (Hamilton's method); each gets <= its size."""
    whole = sum(sizes)
    exact = [total * s / whole for s in sizes]
    quotas = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[: total - sum(quotas)]:
        quotas[i] += 1
    return quotas


def random_subset(n: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """The baseline of equal size: ``round(fraction * n)`` sorted indices drawn uniformly."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: round(fraction * n)].sort().values


@torch.inference_mode()
def pair_embeddings(aligner, source: Source, batch_size: int = 256) -> tuple[torch.Tensor, list[int]]:
    """[M, 2E] concatenated unit-norm image and caption embeddings of the readable samples, and their indices."""
    rows, readable = [], []
    for _, indices, images, captions in readable_batches(source, batch_size):
        readable += indices
        if images:
            rows.append(torch.cat([aligner.encode_image(images), aligner.encode_text(captions)], 1).float())
    if not rows:
        raise DataError(f"{source.name} has no readable sample to cluster.")
    return torch.cat(rows), readable


def reduce_source(aligner, source: Source, fraction: float, num_clusters: int, out: str | Path,
                  shard_size: int = 1000, seed: int = 0) -> ConvertReport:
    """Embed, cluster and keep a representative ``fraction`` of ``source``; write it to ``out`` as shards
    (``wds:out/shards.json``) with ``reduce.json`` (the run, fraction, clusters and the kept indices)."""
    points, readable = pair_embeddings(aligner, source)
    kept = [readable[i] for i in representative_subset(points, fraction, num_clusters, seed).tolist()]
    report = convert(Selection(source, kept), out, shard_size)
    summary = {"source": source.name, "run": str(aligner.run_dir), "step": aligner.step, "fraction": fraction,
               "clusters": num_clusters, "readable": len(readable), "kept": len(kept), "kept_indices": kept}
    (Path(out) / SUMMARY_FILE).write_text(json.dumps(summary))
    return report
