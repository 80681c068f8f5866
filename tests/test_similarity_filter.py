"""Open-Qwen2VL-style data filtering: noisy pairs with known ground truth, scoring, the cut, the written shards."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vlalign.api import load
from vlalign.cli import main
from vlalign.curate.similarity_filter import (
    SCORES_FILE,
    SUMMARY_FILE,
    detection_quality,
    filter_source,
    keep_mask,
    score_pairs,
)
from vlalign.data.noise import ShuffledCaptions
from vlalign.data.specs import build_source
from vlalign.errors import DataError


def test_shuffled_captions_swap_exactly_the_chosen_fraction():
    world = build_source("shapes:n=50,seed=3")
    noisy = ShuffledCaptions(world, 0.2, seed=1)
    assert len(noisy.noisy) == 10 and noisy.noisy == ShuffledCaptions(world, 0.2, seed=1).noisy
    assert noisy.noisy != ShuffledCaptions(world, 0.2, seed=2).noisy
    original = world.captions()
    for i in range(50):
        sample = noisy[i]
        assert torch.equal(torch.from_numpy(sample.image), torch.from_numpy(world[i].image))
        if i in noisy.noisy:
            assert noisy.donor[i] != i and noisy.donor[i] in noisy.noisy
            assert sample.caption == original[noisy.donor[i]]
        else:
            assert sample.caption == original[i]
    assert noisy.captions() == [noisy[i].caption for i in range(50)]
    assert sorted(noisy.donor.values()) == noisy.noisy  # a permutation: every moved caption is used once
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        ShuffledCaptions(world, 1.5)


def test_shuffled_spec_builds_the_same_source_and_needs_a_fraction():
    noisy = build_source("shuffled:fraction=1,seed=4:shapes:n=30,seed=3")
    reference = ShuffledCaptions(build_source("shapes:n=30,seed=3"), 1.0, seed=4)
    assert noisy.captions() == reference.captions()
    assert len(noisy.noisy) == 30  # fraction 1: no image keeps its own caption
    with pytest.raises(DataError, match="give fraction=F"):
        build_source("shuffled:seed=1:shapes:n=30,seed=3")


def test_keep_mask_drops_the_lowest_readable_scores():
    scores = torch.tensor([0.5, float("nan"), -0.2, 0.9, 0.1, 0.3, float("nan"), 0.7])
    keep = keep_mask(scores, 0.5)  # 6 readable -> drop 3: -0.2, 0.1, 0.3
    assert keep.tolist() == [True, False, False, True, False, False, False, True]
    assert keep_mask(scores, 0.0).tolist() == (~scores.isnan()).tolist()
    with pytest.raises(DataError, match="\\[0, 1\\)"):
        keep_mask(scores, 1.0)


def test_detection_quality_counts_hits():
    kept = torch.tensor([True, False, False, True, False])
    assert detection_quality(kept, [1, 3]) == {"dropped": 3, "noisy": 2, "precision": 1 / 3, "recall": 0.5}


def test_filter_writes_the_kept_pairs_as_a_new_source(trained_tiny_run, tmp_path):
    aligner = load(trained_tiny_run)
    source = ShuffledCaptions(build_source("shapes:n=40,seed=5"), 0.25, seed=0)
    result = filter_source(aligner, source, 0.25, tmp_path / "kept", shard_size=16, batch_size=16)

    samples = [source[i] for i in (0, 7, 39)]  # the score is the cosine similarity of the pair's embeddings
    direct = (aligner.encode_image([s.image for s in samples]) * aligner.encode_text([s.caption for s in samples])).sum(-1)
    assert torch.allclose(result.scores[[0, 7, 39]], direct, atol=1e-6)
    assert int(result.kept.sum()) == 30 and (result.scores[~result.kept] <= result.threshold).all()
    assert result.threshold == result.scores[result.kept].min()

    written = build_source(f"wds:{result.shards.index}")
    kept = result.kept.nonzero().squeeze(1).tolist()
    assert len(written) == 30 and len(result.shards.shards) == 2
    assert [written[i].caption for i in range(30)] == [source[i].caption for i in kept]
    assert torch.equal(torch.from_numpy(written[3].image), torch.from_numpy(source[kept[3]].image))

    saved = load_file(tmp_path / "kept" / SCORES_FILE)
    assert torch.equal(saved["score"], result.scores) and torch.equal(saved["kept"].bool(), result.kept)
    summary = json.loads((tmp_path / "kept" / SUMMARY_FILE).read_text())
    assert summary["kept"] == 30 and summary["drop_fraction"] == 0.25 and summary["step"] == 3


def test_scores_of_unreadable_samples_are_nan(trained_tiny_run):
    from vlalign.data.sample import CorruptSample

    class WithABadSample:
        def __init__(self, source):
            self.source, self.name, self.classes, self.channel_names = source, "bad", None, source.channel_names

        def __len__(self):
            return len(self.source)

        def __getitem__(self, i):
            if i == 2:
                raise CorruptSample("undecodable-image", "bad/2")
            return self.source[i]

    scores = score_pairs(load(trained_tiny_run), WithABadSample(build_source("shapes:n=6,seed=1")), batch_size=4)
    assert scores.isnan().tolist() == [False, False, True, False, False, False]


def test_cli_data_filter(trained_tiny_run, tmp_path, capsys):
    out = tmp_path / "filtered"
    assert main(["data", "filter", "shapes:n=20,seed=2", "--checkpoint", str(trained_tiny_run), "--drop", "0.5",
                 "--to", str(out)]) == 0
    assert "kept 10 of 20 pairs" in capsys.readouterr().out
    assert len(build_source(f"wds:{out}/shards.json")) == 10
