import math

import pytest
import torch

from vlalign.objectives.caption import caption_loss, next_token_targets


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds contention on the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def random_batch(batch=4, length=9, vocab=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=g)
    targets = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.rand(batch, length, generator=g) < 0.6
    mask[0, 0] = True  # at least one target everywhere below
    return logits, targets, mask


def test_caption_loss_equals_explicit_loop_over_masked_positions():
    logits, targets, mask = random_batch()
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if mask[b, t]:
                log_probs = logits[b, t] - torch.logsumexp(logits[b, t], dim=0)
                total -= log_probs[targets[b, t]].item()
                count += 1
    assert math.isclose(caption_loss(logits, targets, mask).item(), total / count, rel_tol=1e-5)


def test_next_token_targets_matches_loop_and_skips_prefix_prompt_and_padding():
    ids = torch.tensor([[4, 5, 6, 7, 0], [8, 9, 3, 0, 0]])
    # row 0: prompt token, caption, pad; row 1: caption from its first token (a target only after a prefix), pad
    caption = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    for prefix_len in (0, 3):
        targets, loss_mask = next_token_targets(ids, caption, prefix_len)
        assert targets.shape == loss_mask.shape == (2, prefix_len + 5)
        expected = torch.zeros_like(loss_mask)
        for b in range(2):
            for l in range(5):
                position = prefix_len + l - 1  # the position that predicts token l
                if caption[b, l] and position >= 0:
                    expected[b, position] = True
                    assert targets[b, position] == ids[b, l]
        assert torch.equal(loss_mask, expected)
        assert not loss_mask[:, : max(prefix_len - 1, 0)].any()  # prefix positions before the text predict nothing


def test_caption_loss_ignores_unmasked_logits_and_targets():
    logits, targets, mask = random_batch()
    reference = caption_loss(logits, targets, mask)
    scrambled_logits = torch.where(mask[..., None], logits, torch.randn_like(logits) * 100)
    scrambled_targets = torch.where(mask, targets, torch.full_like(targets, -100))
    torch.testing.assert_close(caption_loss(scrambled_logits, scrambled_targets, mask), reference)


def test_micro_batch_token_weighting_reproduces_full_batch_loss():
    logits, targets, mask = random_batch(batch=6, seed=2)
    mask[3:, :] = False
    mask[3, 1] = True  # second half has far fewer tokens than the first: plain averaging would be wrong
    full = caption_loss(logits, targets, mask)
    halves = [(logits[:3], targets[:3], mask[:3]), (logits[3:], targets[3:], mask[3:])]
    counts = [int(m.sum()) for _, _, m in halves]
    weighted = sum(n / sum(counts) * caption_loss(*half) for n, half in zip(counts, halves))
    torch.testing.assert_close(weighted, full)
    summed = sum(caption_loss(*half, num_tokens=sum(counts)) for half in halves)
    torch.testing.assert_close(summed, full)
    unweighted = sum(caption_loss(*half) for half in halves) / 2
    assert abs(unweighted.item() - full.item()) > 1e-3


def test_empty_mask_gives_zero_with_gradient_and_bad_inputs_raise():
    logits, targets, mask = random_batch()
    logits.requires_grad_(True)
    loss = caption_loss(logits, targets, torch.zeros_like(mask))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="bool"):
        caption_loss(logits, targets, mask.long())
    with pytest.raises(ValueError, match=r"logits \[B, S, V\]"):
        caption_loss(logits, targets[:, :-1], mask)
    with pytest.raises(ValueError, match="num_tokens"):
        caption_loss(logits, targets, mask, num_tokens=0)
