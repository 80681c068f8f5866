"""TL;DR data reduction: k-means in embedding space, a representative fraction from every cluster."""

import pytest
import torch

from vlalign.api import load
from vlalign.cli import main
from vlalign.curate.reduction import kmeans, random_subset, representative_subset
from vlalign.data.specs import build_source
from vlalign.errors import DataError


def blobs(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([centres[i] + 0.5 * torch.randn(n, 2, generator=g) for i, n in enumerate(sizes)])
    labels = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return points, labels


def test_kmeans_recovers_separated_blobs_and_beats_random_centres():
    points, labels = blobs([30, 60, 10])
    found = kmeans(points, 3)
    for blob in range(3):  # every blob is one cluster, and clusters do not mix blobs
        assert found.assignment[labels == blob].unique().numel() == 1
    assert found.assignment.unique().numel() == 3
    centres = torch.stack([points[labels == b].mean(0) for b in range(3)])
    assert torch.allclose(found.centroids[found.assignment[[0, 30, 90]]], centres, atol=1e-5)
    random_centres = points[torch.randperm(100, generator=torch.Generator().manual_seed(1))[:3]]
    random_inertia = (torch.cdist(points, random_centres).min(1).values ** 2).sum()
    assert found.inertia <= random_inertia + 1e-6
    with pytest.raises(DataError, match="k=0"):
        kmeans(points, 0)


def test_the_subset_keeps_every_cluster_in_proportion_nearest_first():
    points, labels = blobs([30, 60, 10])
    kept = representative_subset(points, 0.2, 3)
    assert len(kept) == 20
    assert torch.bincount(labels[kept], minlength=3).tolist() == [6, 12, 2]
    for blob in range(3):  # the kept members of a blob are its points nearest to the blob's mean
        members = (labels == blob).nonzero().squeeze(1)
        distance = (points[members] - points[members].mean(0)).norm(dim=1)
        nearest = members[distance.argsort()[: int((labels[kept] == blob).sum())]]
        assert set(nearest.tolist()) == set(kept[labels[kept] == blob].tolist())
    assert len(random_subset(100, 0.2)) == 20


def test_reduce_cli_writes_a_kept_fraction_as_shards(trained_tiny_run, tmp_path, capsys):
    out = tmp_path / "reduced"
    assert main(["data", "reduce", "shapes:n=40,seed=5", "--checkpoint", str(trained_tiny_run), "--keep", "0.25",
                 "--clusters", "4", "--to", str(out)]) == 0
    kept = build_source(f"wds:{out}/shards.json")
    assert len(kept) == 10
    original = build_source("shapes:n=40,seed=5")
    captions = {original[i].caption for i in range(40)}
    assert all(kept[i].caption in captions for i in range(10))
    assert "wds:" in capsys.readouterr().out
