"""WebDataset shards with known damage: exact skip accounting, the threshold, missing shards, resume.

The fixture (``shard_fixtures.make_shard_set``) is 512 samples in 8 tars with 13 bad samples and
the last tar cut in the middle of a member, so every expected count is known by construction.
"""

from __future__ import annotations

import collections

import pytest
import torch

from shard_fixtures import CUT_SAMPLE, PER_SHARD, SHARDS, make_shard_set
from vlalign.data.loader import Loader
from vlalign.data.sample import CorruptSample
from vlalign.data.specs import build_source
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import DataError


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shard_set(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def tokenizer(shards):
    return train_tokenizer(build_source(f"wds:{shards.index}").captions(), vocab_size=300)


def make_loader(spec, tokenizer, **kwargs) -> Loader:
    # A loose threshold: the first 100 samples of a shuffled epoch may hold more than the average 3.3% bad ones.
    options = {"batch_size": 16, "context_length": 12, "seed": 3, "max_skip_fraction": 0.25} | kwargs
    return Loader(build_source(spec), tokenizer, ImageTransform(8, 3), **options)


def one_epoch(loader: Loader) -> list[str]:
    keys = []
    for batch in loader:
        keys += batch["keys"]
        if loader.next_batch == loader.batches_per_epoch:
            return keys
    raise AssertionError("unreachable: the loader is endless")


def test_every_sample_is_read_or_skipped_with_its_reason(shards):
    for spec, expected in ((f"wds:{shards.index}", shards.skips_with_index),
                           (f"wds:{shards.pattern}", shards.skips_with_pattern)):
        source = build_source(spec)
        reasons, good = collections.Counter(), set()
        for i in range(len(source)):
            try:
                good.add(source[i].key)
            except CorruptSample as bad:
                reasons[bad.reason] += 1
        assert reasons == expected, spec
        assert good == shards.good_keys
        assert len(source) == len(good) + sum(expected.values())
    # Through the index the shard's true count is known, so the invisible tail is counted too.
    assert shards.skips_with_index["truncated-shard"] == SHARDS * PER_SHARD - CUT_SAMPLE
    assert str(shards.dir / "007.tar") in build_source(f"wds:{shards.index}").damaged


def test_an_epoch_yields_exactly_the_good_samples_and_counts_the_rest(shards, tokenizer):
    runs = []
    for _ in range(2):
        loader = make_loader(f"wds:{shards.index}", tokenizer)
        keys = one_epoch(loader)
        assert len(keys) == len(set(keys))
        assert set(keys) == shards.good_keys
        assert loader.skips.seen == SHARDS * PER_SHARD
        assert loader.skips.by_reason == shards.skips_with_index
        assert loader.skips.skipped == sum(shards.skips_with_index.values())
        runs.append(keys)
    assert runs[0] == runs[1]  # the same order, not only the same set


def test_too_many_skips_fail_naming_the_shard(shards, tokenizer):
    # Shards 002 and 003 only: all 8 bad samples of this pair are in 002.
    spec = f"wds:{shards.dir}/{{002..003}}.tar"
    loader = make_loader(spec, tokenizer, max_skip_fraction=0.01)
    with pytest.raises(DataError) as caught:
        for _ in loader:
            pass
    message = str(caught.value)
    assert f"Worst source: {shards.dir / '002.tar'}" in message
    assert "data.max_skip_fraction=0.01" in message and "not-an-image: 2" in message


def test_missing_shards_raise_unless_allowed(shards, tmp_path):
    spec = f"wds:{shards.dir}/{{000..008}}.tar"
    with pytest.raises(DataError, match="1 of 9 shards are missing.*008.tar.*allow_missing_shards"):
        build_source(spec)
    source = build_source(spec + ",allow_missing_shards=true")
    assert source.missing_shards == [f"{shards.dir}/008.tar"]
    assert len(source) == len(build_source(f"wds:{shards.pattern}"))
    with pytest.raises(DataError, match="matches no file"):
        build_source(f"wds:{tmp_path}/{{000..003}}.tar,allow_missing_shards=true")
    with pytest.raises(DataError, match="unknown option 'allow_missing'"):
        build_source(f"wds:{shards.pattern},allow_missing=1")


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world, rank", [(1, 0), (2, 0), (2, 1)])
def test_state_round_trip_gives_the_same_next_batches(shards, tokenizer, num_workers, world, rank):
    # Two shards (128 samples, 8 of them bad) keep this fast; with world 2 the 5 batches after k = 3 cross an epoch.
    spec = f"wds:{shards.dir}/{{001..002}}.tar"
    kwargs = {"world": world, "rank": rank, "num_workers": num_workers}
    per_epoch = make_loader(spec, tokenizer, **kwargs).batches_per_epoch
    for k in (3, per_epoch):  # mid-epoch, and at the epoch boundary ("epoch 0, every batch done")
        original = make_loader(spec, tokenizer, **kwargs)
        stream = iter(original)
        while original.next_batch < k:
            next(stream)
        state = original.state_dict()
        expected = [next(stream) for _ in range(5)]
        resumed = make_loader(spec, tokenizer, **kwargs)
        resumed.load_state_dict(state)
        got = [batch for _, batch in zip(range(5), resumed)]
        for a, b in zip(expected, got):
            assert a["keys"] == b["keys"]
            assert torch.equal(a["images"], b["images"]) and torch.equal(a["text_ids"], b["text_ids"])
        assert resumed.skips.state_dict() == original.skips.state_dict()
        assert (resumed.epoch, resumed.next_batch) == (original.epoch, original.next_batch)


def test_ranks_split_an_epoch_without_overlap(shards, tokenizer):
    keys = [set(one_epoch(make_loader(f"wds:{shards.index}", tokenizer, world=2, rank=r))) for r in (0, 1)]
    assert not keys[0] & keys[1]
    assert keys[0] | keys[1] == shards.good_keys
