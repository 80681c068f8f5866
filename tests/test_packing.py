"""Open-Qwen2VL sequence packing: first-fit-decreasing rows, block-diagonal causal masks, positions that
restart per example, and the same loss and gradients as the padded batch."""

import pytest
import torch

from vlalign.models.factory import build_model
from vlalign.models.packing import block_causal_mask, first_fit_decreasing, from_rows, pack, to_rows
from vlalign.objectives import build_objective
from vlalign.recipes import get_recipe


def test_first_fit_decreasing_fills_rows_within_their_length():
    assert first_fit_decreasing([6, 5, 4, 3, 2], 10) == [0, 1, 0, 1, 1]
    lengths = torch.randint(1, 30, (50,), generator=torch.Generator().manual_seed(0)).tolist()
    rows = first_fit_decreasing(lengths, 40)
    for r in set(rows):
        assert sum(n for n, row in zip(lengths, rows) if row == r) <= 40
    assert max(rows) + 1 <= -(-sum(lengths) // 40) * 11 // 9 + 1  # FFD's bound over the lower bound
    with pytest.raises(ValueError, match="does not fit a packed row of 10"):
        first_fit_decreasing([11], 10)


def test_rows_hold_each_example_contiguously_with_restarting_positions():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 0, 0]], dtype=torch.bool)  # a gap in row 2
    packed = pack(mask, 8)
    values = torch.arange(15.0).view(3, 5, 1) + 1
    rows = to_rows(values, packed)
    for b in range(3):
        seg = packed.segments == b
        assert rows[seg].squeeze(-1).tolist() == values[b][mask[b]].squeeze(-1).tolist()  # order kept
        assert packed.positions[seg].tolist() == list(range(int(mask[b].sum())))
    assert torch.equal(from_rows(rows, packed), values * mask[..., None])
    assert packed.num_rows == 2 and packed.real_entries == 10
    assert packed.padding_fraction == pytest.approx(1 - 10 / 16)
    assert packed.unpacked_padding_fraction == pytest.approx(1 - 10 / 15)


def test_block_causal_mask_matches_a_loop():
    segments = torch.tensor([[0, 0, 0, 1, 1, -1], [2, 2, 3, 3, 3, 3]])
    mask = block_causal_mask(segments)
    for r in range(2):
        for t in range(6):
            for s in range(6):
                same = segments[r, t] == segments[r, s] and segments[r, s] >= 0 and s <= t
                assert bool(mask[r, 0, t, s]) == (same or s == t)


def generative_batch(vocab: int, lengths: list[int], images: bool):
    g = torch.Generator().manual_seed(1)
    longest = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), longest), generator=g)
    text_mask = torch.arange(longest)[None] < torch.tensor(lengths)[:, None]  # right padded
    ids[~text_mask] = 0
    target_mask = text_mask.clone()
    target_mask[:, :2] = False  # a prompt of two tokens that is never a target
    content = target_mask.clone()
    batch = {"images": torch.randn(len(lengths), 3, 32, 32, generator=g) if images else None,
             "channel_ids": None, "text_ids": ids, "text_mask": text_mask, "target_mask": target_mask,
             "content_mask": content}
    return batch


@pytest.mark.parametrize("arch,objective", [("vlm", "generative"), ("vlm", "cgvlm"), ("lm", "generative")])
def test_packed_loss_and_gradients_equal_the_padded_ones(arch, objective):
    cfg = get_recipe("cgvlm-stage2")
    cfg.model.arch, cfg.objective.name, cfg.model.vlm.freeze = arch, objective, []
    torch.manual_seed(0)
    model = build_model(cfg.model, 32, 64, 48)
    batch = generative_batch(64, [5, 17, 9, 30, 12, 3], images=arch == "vlm")
    loss_fn = build_objective(cfg.objective)

    def loss_and_grads(pack_length):
        model.zero_grad()
        model.pack_length = pack_length
        out = model(batch["images"], batch["text_ids"], batch["text_mask"], batch["channel_ids"])
        loss, metrics = loss_fn(out, batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, metrics

    padded, padded_grads, _ = loss_and_grads(0)
    packed, packed_grads, metrics = loss_and_grads(64)
    assert torch.allclose(packed, padded, atol=1e-5)
    assert padded_grads.keys() == packed_grads.keys()
    for name in padded_grads:
        assert torch.allclose(packed_grads[name], padded_grads[name], atol=1e-5), name
    assert metrics["pack/padding"] < metrics["pack/unpacked_padding"]
