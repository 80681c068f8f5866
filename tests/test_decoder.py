import pytest
import torch

from vlalign.models.decoder import CausalDecoder, DecoderConfig, KVCache, rotary, rotate
from vlalign.objectives.caption import caption_loss, next_token_targets


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds contention on the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

VOCAB, WIDTH, DEPTH = 50, 32, 2


def make_decoder(seed: int = 0, **overrides) -> CausalDecoder:
    torch.manual_seed(seed)
    cfg = DecoderConfig(**{"vocab_size": VOCAB, "context_length": 48, "width": WIDTH, "depth": DEPTH, "heads": 4, **overrides})
    return CausalDecoder(cfg).eval()


def random_inputs(batch=3, tokens=7, prefix_len=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, tokens), generator=g)
    prefix = torch.randn(batch, prefix_len, WIDTH, generator=g)
    return ids, prefix


def test_output_shapes_and_tied_head():
    model = make_decoder()
    ids, prefix = random_inputs()
    out = model(ids, prefix)
    assert out.logits.shape == (3, 4 + 7, VOCAB)
    assert len(out.hidden_states) == DEPTH + 1
    assert all(h.shape == (3, 11, WIDTH) for h in out.hidden_states)
    assert model(ids).logits.shape == (3, 7, VOCAB)
    # hidden_states[0] is the first block's input: prefix/tokens plus positions 0..P+L-1.
    first_input = torch.cat([prefix, model.embed(ids)], dim=1) + model.embed_positions.weight[:11]
    torch.testing.assert_close(out.hidden_states[0], first_input)
    assert model.embed(ids).shape == (3, 7, WIDTH)
    # Tied: the output projection is the input embedding table itself.
    h_final = out.hidden_states[-1]
    torch.testing.assert_close(out.logits, h_final @ model.embed_tokens.weight.T)
    untied = make_decoder(tie_embeddings=False)
    assert untied.lm_head is not None and untied.lm_head.weight.data_ptr() != untied.embed_tokens.weight.data_ptr()


def test_causality_changing_token_t_leaves_earlier_positions_untouched():
    model = make_decoder()
    ids, prefix = random_inputs(batch=2, tokens=8, prefix_len=3)
    t = 5
    changed = ids.clone()
    changed[:, t] = (ids[:, t] + 1) % VOCAB
    pos = 3 + t  # sequence position of token t
    # Both attention paths: SDPA's built-in causal mask, and the explicit one used with a mask.
    for mask in (None, torch.ones(2, 3 + 8, dtype=torch.bool)):
        before, after = model(ids, prefix, mask).logits, model(changed, prefix, mask).logits
        torch.testing.assert_close(after[:, :pos], before[:, :pos], rtol=0, atol=1e-6)
        assert (after[:, pos:] - before[:, pos:]).abs().amax() > 1e-4


def test_prefix_is_attended():
    model = make_decoder()
    ids, prefix = random_inputs()
    other_prefix = prefix + torch.randn_like(prefix)
    text_logits = model(ids, prefix).logits[:, 4:]
    assert (model(ids, other_prefix).logits[:, 4:] - text_logits).abs().amax() > 1e-3


POSITIONS = ["learned", "rope"]


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_real_positions(side, positions):
    """Each row of a padded batch gives the logits it gets alone (positions come from the mask)."""
    model = make_decoder(positions=positions)
    ids, prefix = random_inputs(batch=3, tokens=6, prefix_len=2)
    lengths = [6, 3, 1]
    padded = torch.zeros_like(ids)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    for b, n in enumerate(lengths):
        sl = slice(6 - n, 6) if side == "left" else slice(0, n)
        padded[b, sl], mask[b, sl] = ids[b, :n], True
    logits = model(padded, prefix, attention_mask=mask).logits  # [B, 2+6, V]; text-only mask form
    assert all(h.isfinite().all() for h in model(padded, prefix, attention_mask=mask).hidden_states)
    for b, n in enumerate(lengths):
        alone = model(ids[b : b + 1, :n], prefix[b : b + 1]).logits[0]  # [2+n, V]
        real = torch.cat([torch.ones(2, dtype=torch.bool), mask[b]])
        torch.testing.assert_close(logits[b, real], alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("positions", POSITIONS)
def test_kv_cache_incremental_forward_matches_full_forward(positions):
    model = make_decoder(positions=positions)
    ids, prefix = random_inputs(batch=2, tokens=9, prefix_len=3)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :4] = False  # left padding in row 1
    full = model(ids, prefix, mask).logits  # [B, 12, V]
    cache = KVCache()
    pieces = [model(ids[:, :5], prefix, mask[:, :5], kv_cache=cache).logits]
    for t in range(5, 9):
        pieces.append(model(ids[:, t : t + 1], attention_mask=mask[:, t : t + 1], kv_cache=cache).logits)
    assert len(cache) == 12 and len(cache.keys) == DEPTH
    incremental = torch.cat(pieces, dim=1)
    real = torch.cat([torch.ones(2, 3, dtype=torch.bool), mask], dim=1)
    torch.testing.assert_close(incremental[real], full[real], rtol=0, atol=1e-5)


def left_padded_prompts():
    prompts = [[5, 9, 2, 7], [3, 1], [8]]
    ids = torch.zeros(3, 4, dtype=torch.long)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    for b, p in enumerate(prompts):
        ids[b, 4 - len(p) :] = torch.tensor(p)
        mask[b, 4 - len(p) :] = True
    return prompts, ids, mask


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("sampling", [False, True])
def test_cached_generation_equals_uncached(sampling, positions):
    model = make_decoder(positions=positions)
    _, ids, mask = left_padded_prompts()
    prefix = torch.randn(3, 2, WIDTH, generator=torch.Generator().manual_seed(3))
    kwargs = dict(prefix=prefix, attention_mask=mask, max_new_tokens=12)
    if sampling:
        kwargs.update(temperature=1.5, top_k=20)
    results = [
        model.generate(ids, use_cache=use_cache, generator=torch.Generator().manual_seed(7), **kwargs)
        for use_cache in (True, False)
    ]
    assert results[0].shape == (3, 12)
    assert torch.equal(results[0], results[1])


def test_rotary_scores_depend_on_the_offset_only_and_keep_norms():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 16, generator=g)  # [B=1, H=1, S=1, Dh=16] each

    def score(m: int, n: int) -> torch.Tensor:
        return (rotate(q, rotary(torch.tensor([[m]]), 16)) * rotate(k, rotary(torch.tensor([[n]]), 16))).sum()

    # float32 angles up to ~40 rad: cos/sin errors of a few 1e-6, times |q||k| ~ 16
    torch.testing.assert_close(score(7, 3), score(37, 33), rtol=0, atol=1e-4)
    torch.testing.assert_close(score(5, 5), (q * k).sum(), rtol=0, atol=1e-5)  # offset 0: the plain dot product
    assert abs(score(7, 3) - score(7, 7)) > 0.1  # another offset, another score
    torch.testing.assert_close(rotate(q, rotary(torch.tensor([[11]]), 16)).norm(), q.norm(), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="positions"):
        DecoderConfig(vocab_size=VOCAB, positions="alibi")


def test_generation_from_prefix_alone():
    model = make_decoder()
    prefix = torch.randn(2, 3, WIDTH, generator=torch.Generator().manual_seed(4))
    no_tokens = torch.zeros(2, 0, dtype=torch.long)
    cached = model.generate(no_tokens, prefix, max_new_tokens=6)
    assert cached.shape == (2, 6)
    assert torch.equal(cached, model.generate(no_tokens, prefix, max_new_tokens=6, use_cache=False))
    assert cached[:, 0].tolist() == model(no_tokens, prefix).logits[:, -1].argmax(-1).tolist()


def test_batched_left_padded_generation_matches_one_prompt_at_a_time():
    model = make_decoder()
    prompts, ids, mask = left_padded_prompts()
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=10)
    for b, p in enumerate(prompts):
        alone = model.generate(torch.tensor([p]), max_new_tokens=10)
        assert torch.equal(batched[b], alone[0])


def test_generation_stops_at_eos_and_pads_finished_rows():
    model = make_decoder()
    ids, prefix = random_inputs(batch=3, tokens=2)
    free = model.generate(ids, prefix, max_new_tokens=8)
    eos = int(free[0, 2])  # row 0 emits this token at step 2, so it must stop there
    stopped = model.generate(ids, prefix, max_new_tokens=8, eos_id=eos)
    for b in range(3):
        hits = (free[b] == eos).nonzero()
        end = int(hits[0]) if len(hits) else 8
        assert torch.equal(stopped[b, : end + 1], free[b, : end + 1])
        assert (stopped[b, end + 1 :] == eos).all()
    ends = [int((free[b] == eos).nonzero()[0]) if (free[b] == eos).any() else 7 for b in range(3)]
    assert stopped.shape[1] == max(ends) + 1


def test_bad_inputs_raise_clear_errors():
    model = make_decoder()
    ids, prefix = random_inputs()
    with pytest.raises(ValueError, match="prefix must be"):
        model(ids, prefix[..., :8])
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 49, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        model(torch.full((1, 3), VOCAB))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(ids, prefix, torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="LEFT-padded"):
        model.generate(ids, attention_mask=torch.tensor([[1] * 6 + [0]] * 3))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(ids, prefix, max_new_tokens=48 - 11 + 2)
    with pytest.raises(ValueError, match="divisible"):
        DecoderConfig(vocab_size=10, width=30, heads=4)


def test_tiny_model_overfits_captions_and_greedy_decoding_reproduces_them():
    """Each sentence is tied to its own random 'image' prefix; after training the prefix alone
    (plus a BOS token) must be enough to regenerate the sentence greedily."""
    sentences = ["a red circle", "two blue squares", "a green star on top", "one small cat"]
    chars = sorted(set("".join(sentences)))
    bos, eos, pad = 0, 1, 2
    stoi = {c: i + 3 for i, c in enumerate(chars)}
    encoded = [[bos] + [stoi[c] for c in s] + [eos] for s in sentences]
    length = max(map(len, encoded))
    ids = torch.full((4, length), pad)
    target_mask = torch.zeros(4, length, dtype=torch.bool)
    for b, seq in enumerate(encoded):
        ids[b, : len(seq)] = torch.tensor(seq)
        target_mask[b, 1 : len(seq)] = True  # caption + EOS; never BOS or padding
    torch.manual_seed(0)
    model = CausalDecoder(DecoderConfig(vocab_size=len(chars) + 3, context_length=32, width=64, depth=2, heads=4))
    prefix = torch.randn(4, 2, 64)
    targets, loss_mask = next_token_targets(ids, target_mask, prefix_len=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first_loss = None
    for _ in range(100):
        out = model(ids, prefix, attention_mask=ids != pad)
        loss = caption_loss(out.logits, targets, loss_mask)
        first_loss = first_loss if first_loss is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first_loss > 2.5 and loss.item() < 0.05
    model.eval()
    generated = model.generate(torch.full((4, 1), bos), prefix, max_new_tokens=length, eos_id=eos)
    itos = {i: c for c, i in stoi.items()}
    decoded = []
    for row in generated.tolist():
        caption = row[: row.index(eos)] if eos in row else row + ["<no eos>"]
        decoded.append("".join(itos.get(t, str(t)) for t in caption))
    assert decoded == sentences
