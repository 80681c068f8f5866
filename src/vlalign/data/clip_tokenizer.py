"""CLIP's BPE tokenizer inside vlalign, and back out again.

vlalign reads token id 0 as padding everywhere (``TextTokenizer``, the towers' default masks); CLIP's
vocabulary gives id 0 to "!". A CLIP tokenizer therefore enters a run with every id moved up by one
and ``[PAD]`` at 0 (``shift_in``), and its embedding table gains a row 0 (``vlalign.models.clip_names``).
``shift_out`` restores CLIP's own numbering for an export. The normaliser, pre-tokeniser, merges and
the BOS/EOS post-processor stay CLIP's; decoding drops the end-of-word marker as Hugging Face's does.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders

from vlalign.data.tokenizer import EOS_NAMES, PAD, TextTokenizer
from vlalign.errors import CheckpointError

EOT = EOS_NAMES[-1]  # CLIP's end-of-text token, the one its text tower pools
WORD_END = "</w>"  # CLIP's BPE suffix of a word's last piece
PAD_ENTRY = {"id": 0, "content": PAD, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True}


def read_clip_tokenizer(directory: str | Path) -> TextTokenizer:
    """A Hugging Face CLIP directory's tokenizer (``tokenizer.json``, else ``vocab.json`` + ``merges.txt``
    through ``transformers.CLIPTokenizer``) as a ``TextTokenizer``. A tokenizer that already pads with id 0
    (a vlalign run exported with its own vocabulary) is taken as it is; CLIP's own is shifted in."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(str(directory), local_files_only=True).backend_tokenizer
    else:
        raise CheckpointError(f"{directory} has no tokenizer: expected tokenizer.json, or vocab.json and merges.txt.")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    if tokenizer.token_to_id(PAD) == 0:
        return TextTokenizer(tokenizer)
    return TextTokenizer(shift_in(tokenizer))


def is_shifted_clip(tokenizer: TextTokenizer) -> bool:
    """True for a CLIP vocabulary moved up by one by ``shift_in`` (its ids are CLIP's plus one); a run's
    ``TextTokenizer`` always pads with id 0, and only CLIP's vocabulary has its end-of-text token."""
    return tokenizer.tokenizer.token_to_id(EOT) is not None


def shift_in(tokenizer: Tokenizer) -> Tokenizer:
    """CLIP's tokenizer with every id + 1 and ``[PAD]`` at id 0."""
    if tokenizer.token_to_id(EOT) is None:
        raise CheckpointError(f"this tokenizer has no {EOT} token and no {PAD} token at id 0: it is neither CLIP's "
                              "nor a vlalign run's.")
    shifted = _renumber(tokenizer, +1)
    # Hugging Face strips CLIP's end-of-word marker in Python, after the byte-level decoder; here it is a decoder
    shifted.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace(WORD_END, " ")])
    return shifted


def shift_out(tokenizer: TextTokenizer) -> Tokenizer:
    """The inverse of ``shift_in``: CLIP's own numbering, without ``[PAD]``."""
    return _renumber(tokenizer.tokenizer, -1)


def _renumber(tokenizer: Tokenizer, step: int) -> Tokenizer:
    data = json.loads(tokenizer.to_str())
    model = data["model"]
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise CheckpointError(f"a CLIP tokenizer is a BPE model; this one is {model.get('type')!r}.")
    vocab = {token: i + step for token, i in model["vocab"].items() if token != PAD}
    added = [dict(entry, id=entry["id"] + step) for entry in data.get("added_tokens", []) if entry["content"] != PAD]
    if step > 0:
        vocab[PAD] = 0
        added.insert(0, PAD_ENTRY)
    model["vocab"], data["added_tokens"] = vocab, added
    data["post_processor"] = _renumber_processor(data.get("post_processor"), step)
    return Tokenizer.from_str(json.dumps(data))


def _renumber_processor(processor: dict | None, step: int) -> dict | None:
    """The BOS/EOS ids a post-processor inserts, moved by ``step``: CLIP's ``RobertaProcessing`` (Hugging Face's
    conversion) or a ``TemplateProcessing``."""
    if processor is None:
        return None
    kind = processor.get("type")
    if kind == "RobertaProcessing":
        return dict(processor, **{key: [processor[key][0], processor[key][1] + step] for key in ("sep", "cls")})
    if kind == "TemplateProcessing":
        special = {name: dict(entry, ids=[i + step for i in entry["ids"]])
                   for name, entry in processor["special_tokens"].items()}
        return dict(processor, special_tokens=special)
    raise CheckpointError(f"unexpected post-processor {kind!r} in a CLIP tokenizer (expected RobertaProcessing or "
                          "TemplateProcessing).")
