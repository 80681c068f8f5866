import logging

import pytest
import torch

from vlalign.config import apply_overrides
from vlalign.data.loader import Loader, epoch_order, resampled_stream
from vlalign.data.specs import build_source
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import ConfigError

SOURCE = build_source("shapes:n=96,seed=3,size=32")
TOKENIZER = train_tokenizer(SOURCE.captions(), vocab_size=300)


def make_loader(seed=0, rank=0, world=1, order="exact", num_workers=0):
    return Loader(SOURCE, TOKENIZER, ImageTransform(32, 3), batch_size=16, context_length=24, seed=seed, rank=rank,
                  world=world, order=order, num_workers=num_workers)


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_order_is_a_function_of_seed_epoch_rank():
    assert torch.equal(epoch_order(100, 1, 0), epoch_order(100, 1, 0))
    assert not torch.equal(epoch_order(100, 1, 0), epoch_order(100, 1, 1))
    ranks = torch.cat([epoch_order(100, 1, 0, r, 2) for r in range(2)])
    assert sorted(ranks.tolist()) == list(range(100))  # the ranks partition the epoch


def test_state_round_trip_continues_with_the_very_next_batch_across_an_epoch():
    reference = take(make_loader(), 10)  # 6 batches per epoch: crosses into epoch 1
    first = make_loader()
    it = iter(first)
    for _ in range(4):
        next(it)
    state = first.state_dict()
    resumed = make_loader()
    resumed.load_state_dict(state)
    for expected, got in zip(reference[4:], take(resumed, 6)):
        assert expected["keys"] == got["keys"]
        assert torch.equal(expected["images"], got["images"]) and torch.equal(expected["text_ids"], got["text_ids"])


def test_different_seeds_give_different_orders():
    assert take(make_loader(seed=0), 1)[0]["keys"] != take(make_loader(seed=1), 1)[0]["keys"]


# ---------------------------------------------------------------- resampled order


def keys(batches):
    return [b["keys"] for b in batches]


def test_resampled_is_a_function_of_the_seed_and_not_the_exact_order():
    first = keys(take(make_loader(seed=4, order="resampled"), 6))
    assert first == keys(take(make_loader(seed=4, order="resampled"), 6))
    assert first != keys(take(make_loader(seed=5, order="resampled"), 6))
    assert first != keys(take(make_loader(seed=4, order="exact"), 6))
    rank_streams = [keys(take(make_loader(seed=4, rank=r, world=2, order="resampled"), 3)) for r in range(2)]
    assert rank_streams[0] != rank_streams[1]


def test_resampled_batches_are_distinct_within_and_drawn_with_replacement_between():
    loader = make_loader(order="resampled")
    batches = take(loader, loader.batches_per_epoch)  # an exact epoch would show each of the 96 samples once
    for b in batches:
        assert len(set(b["keys"])) == len(b["keys"]) == 16
    drawn = [k for b in batches for k in b["keys"]]
    assert len(set(drawn)) < len(drawn)  # some sample came back before all were seen
    assert (loader.epoch, loader.next_batch) == (1, 0)  # epochs count whole passes' worth of batches


def test_resampled_batches_match_their_index_stream_with_and_without_workers():
    stream = resampled_stream(len(SOURCE), 16, seed=2, rank=0, start=0)
    expected = [[SOURCE[i].key for i in next(stream)] for _ in range(3)]
    for workers in (0, 2):
        assert keys(take(make_loader(seed=2, order="resampled", num_workers=workers), 3)) == expected


def test_resampled_resume_starts_a_fresh_stream_seeded_from_the_batches_drawn(caplog):
    with caplog.at_level(logging.WARNING, logger="vlalign.data.loader"):
        first = make_loader(seed=1, order="resampled")
    assert "fresh random stream" in caplog.text  # said once at start
    uninterrupted = keys(take(first, 10))
    interrupted = make_loader(seed=1, order="resampled")
    it = iter(interrupted)
    for _ in range(7):  # crosses the 6-batch epoch mark
        next(it)
    state = interrupted.state_dict()
    caplog.clear()
    resumed = make_loader(seed=1, order="resampled")
    with caplog.at_level(logging.WARNING, logger="vlalign.data.loader"):
        resumed.load_state_dict(state)
    assert "after 7 batches" in caplog.text  # and again on resume
    assert resumed.batches_drawn == 7
    fresh = resampled_stream(len(SOURCE), 16, seed=1, rank=0, start=7)
    got = keys(take(resumed, 3))
    assert got == [[SOURCE[i].key for i in next(fresh)] for _ in range(3)]
    assert got != uninterrupted[7:10]  # documented: not the very next sample of the saved run


def test_an_exact_checkpoint_resumes_in_resampled_order_after_the_same_number_of_batches(caplog):
    exact = make_loader(seed=3)
    it = iter(exact)
    for _ in range(8):
        next(it)
    resumed = make_loader(seed=3, order="resampled")
    with caplog.at_level(logging.WARNING, logger="vlalign.data.loader"):
        resumed.load_state_dict(exact.state_dict())
    assert "written with data.order=exact" in caplog.text
    fresh = resampled_stream(len(SOURCE), 16, seed=3, rank=0, start=8)
    assert keys(take(resumed, 1)) == [[SOURCE[i].key for i in next(fresh)]]


def test_data_order_is_a_checked_choice(tiny_cfg):
    assert apply_overrides(tiny_cfg, ["data.order=resampled"]).data.order == "resampled"
    with pytest.raises(ConfigError, match="data.order"):
        apply_overrides(tiny_cfg, ["data.order=random"])
