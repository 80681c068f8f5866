"""VL-GPT: interleaved image-text rows, continuous image slots, text CE + image regression, generation by retrieval."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlalign.data.interleaved import document_batch, interleave_rows
from vlalign.models.decoder import CausalDecoder, DecoderConfig
from vlalign.models.interleaved import InterleavedLM
from vlalign.objectives.interleaved import (
    InterleavedLossConfig,
    interleaved_loss,
    regression_targets,
)
from vlalign.train.interleaved import fit_interleaved

SPECIALS = {"pad": 0, "bos": 1, "eos": 2, "image": 15}


def tiny(vocab=16, image_dim=6):
    torch.manual_seed(0)
    decoder = CausalDecoder(DecoderConfig(vocab_size=vocab, context_length=24, width=32, depth=1, heads=2))
    return InterleavedLM(decoder, image_dim, SPECIALS["image"])


def test_rows_put_each_pair_in_its_order_between_bos_and_eos():
    ids, mask = interleave_rows([[([5, 6], False), ([7], True)], [([8], True)]], 1, 2, 0, 15)
    assert ids.tolist() == [[1, 5, 6, 15, 15, 7, 2], [1, 15, 8, 2, 0, 0, 0]]
    assert mask.sum(1).tolist() == [7, 4]


def test_image_slots_take_the_rows_images_in_order():
    model = tiny()
    ids = torch.tensor([[1, 15, 5, 15, 2], [1, 6, 15, 2, 0]])
    images = torch.randn(2, 2, 6)
    x = model.embed(ids, images)
    projected = model.image_in(images)
    torch.testing.assert_close(x[0, 1], projected[0, 0])
    torch.testing.assert_close(x[0, 3], projected[0, 1])
    torch.testing.assert_close(x[1, 2], projected[1, 0])
    torch.testing.assert_close(x[0, 2], model.decoder.embed(ids)[0, 2])
    with pytest.raises(ValueError, match="image slots"):
        model.embed(ids, images[:, :1])


def test_regression_reads_the_word_before_each_slot_only():
    ids = torch.tensor([[1, 15, 5, 6, 15, 15, 2]])
    where = regression_targets(ids, torch.ones_like(ids, dtype=torch.bool), 15, (1, 0))
    assert where[0].nonzero().squeeze(1).tolist() == [3]  # BOS before slot 1 and slot 4 before slot 5 do not count


def test_loss_matches_an_explicit_loop_over_positions():
    model = tiny()
    ids = torch.tensor([[1, 5, 15, 6, 15, 2, 0]])
    mask = ids != 0
    images = torch.randn(1, 2, 6)
    out = model(ids, mask, images)
    total, metrics = interleaved_loss(out, ids, mask, images, 15, (1, 0), InterleavedLossConfig(weight=0.5))
    text_terms, image_terms = [], []
    for p in range(ids.shape[1] - 1):
        nxt = ids[0, p + 1].item()
        if mask[0, p + 1] and nxt != 15:
            text_terms.append(F.cross_entropy(out.logits[0, p][None], ids[0, p + 1][None]))
        if nxt == 15 and ids[0, p].item() not in (1, 0, 15):
            image_number = int((ids[0, : p + 1] == 15).sum())
            image_terms.append(((out.predicted_images[0, p] - images[0, image_number]) ** 2).sum())
    assert len(image_terms) == 2
    expected = torch.stack(text_terms).mean() + 0.5 * torch.stack(image_terms).mean()
    torch.testing.assert_close(total, expected)
    assert set(metrics) == {"loss/text", "loss/image"}


def test_the_prediction_before_a_slot_cannot_see_that_image():
    model = tiny().eval()
    ids = torch.tensor([[1, 5, 6, 15, 2]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    a, b = torch.randn(1, 1, 6), torch.randn(1, 1, 6)
    pa, pb = model(ids, mask, a).predicted_images, model(ids, mask, b).predicted_images
    torch.testing.assert_close(pa[:, :3], pb[:, :3])
    assert not torch.allclose(pa[:, 3], pb[:, 3])


def test_training_generates_embeddings_that_retrieve_the_described_image():
    """Four captions, each with its own image embedding: after training, the embedding predicted after a
    caption is nearest to that caption's image."""
    captions = [[3, 4], [3, 5], [6, 4], [6, 5]]
    images = F.normalize(torch.randn(4, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    model = tiny()
    history = fit_interleaved(model, captions, images, SPECIALS, steps=80, batch_size=16, lr=5e-3)
    assert history[-1]["loss/image"] < history[0]["loss/image"]
    ids, mask = interleave_rows([[(c, False)] for c in captions], 1, 2, 0, 15)
    prompt_ids, prompt_mask = ids[:, :3], mask[:, :3]  # [BOS, w1, w2]: the slot comes next
    predicted = model.eval().predict_image(prompt_ids, prompt_mask)
    nearest = (F.normalize(predicted, dim=1) @ images.t()).argmax(1)
    assert nearest.tolist() == [0, 1, 2, 3]


def test_document_batches_hold_distinct_items_with_their_images():
    rng = np.random.default_rng(0)
    images = torch.arange(5.0)[:, None].expand(5, 3)
    batch = document_batch(rng, [[3], [4], [5], [6], [7]], images, 4, 2, SPECIALS)
    assert batch["image_embeds"].shape == (4, 2, 3)
    for row in range(4):
        words = [w for w in batch["ids"][row].tolist() if w >= 3 and w != 15]
        assert [w - 3 for w in words] == batch["image_embeds"][row, :, 0].long().tolist()
