import torch

from vlalign.data.loader import Loader, epoch_order
from vlalign.data.specs import build_source
from vlalign.data.tokenizer import train_tokenizer
from vlalign.data.transforms import ImageTransform


def make_loader(seed=0, rank=0, world=1):
    source = build_source("shapes:n=96,seed=3,size=32")
    tokenizer = train_tokenizer(source.captions(), vocab_size=300)
    return Loader(source, tokenizer, ImageTransform(32, 3), batch_size=16, context_length=24, seed=seed, rank=rank,
                  world=world)


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
