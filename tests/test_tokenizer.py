from vlalign.data.tokenizer import TextTokenizer, train_tokenizer

CAPTIONS = ["a small red circle to the left of a blue square", "a large green star above a white cross",
            "two shapes: a yellow diamond below a purple hexagon"] * 20


def test_round_trip_and_padding(tmp_path):
    tok = train_tokenizer(CAPTIONS, vocab_size=300)
    ids, mask = tok(["a small red circle", "a large green star above a white cross"], 24)
    assert ids.shape == (2, 24) and mask.dtype.is_floating_point is False
    assert ids[0, 0] == tok.bos_id and ids[0, mask[0].sum() - 1] == tok.eos_id
    assert (ids[~mask] == 0).all()  # padding is id 0, right of the text
    assert tok.decode(ids[0]) == "a small red circle"
    tok.save(tmp_path / "tok.json")
    again = TextTokenizer.load(tmp_path / "tok.json")
    assert again.encode(CAPTIONS[0]) == tok.encode(CAPTIONS[0])


def test_truncation_keeps_eos_and_unseen_words_encode():
    tok = train_tokenizer(CAPTIONS, vocab_size=300)
    ids, mask = tok([CAPTIONS[0] + " and more words never seen zebra"], 8)
    assert mask.all() and ids[0, -1] == tok.eos_id
    assert tok.decode(tok.encode("zebra")) == "zebra"  # byte-level BPE: nothing is unknown
