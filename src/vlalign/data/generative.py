"""Batches for the generative (LLaVA-style) models: an optional image, a prompt and a target text.

Each sample becomes one example (METHODS.md §3.4):
- text only (arch "lm", the language model's pre-training): the sample as one plain-text document
  (its caption; for a question sample, caption, question and answer), all of it a target, the
  answer marked apart (``answer``) so that the loss can weight it (``objective.answer_share``);
- image + caption (stage 1, alignment): no prompt, the caption is the target;
- image + question (stage 2, instruction tuning; samples with ``meta["question"]``): the question
  is the prompt, the answer the target.

Token layout, right padded: ``[BOS] prompt target [EOS] [PAD]...``. ``target_mask`` marks the target
and its EOS (what the generative loss learns); ``answer_mask`` the part of it that answers a question
(the answer and its EOS: all of a stage-2 target, the end of a text-only QA document, nothing of a
caption); ``content_mask`` marks the target's own tokens, the
sentence that CG-VLM's contrastive loss compares with the image, and ``content_word_mask`` those of them
that are not function words (``FUNCTION_WORDS``; the option ``objective.contrastive_words=content``). Prompts for generation are left
padded instead (``encode_prompts``), as ``CausalDecoder.generate`` requires.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vlalign.data.loader import read_samples
from vlalign.data.sample import Sample, Source
from vlalign.data.shapes_qa import qa_document
from vlalign.data.tokenizer import TextTokenizer
from vlalign.data.transforms import ImageTransform
from vlalign.errors import DataError


# English function words: tokens that name nothing in an image. CG-VLM's contrastive term pulls the pooled
# image towards the mean of its caption's token embeddings; with these included, "a", "the", "of" and "is"
# (most of a shapes caption) weigh as much as its colour and shape words.
FUNCTION_WORDS = frozenset(
    "a an the this that these those there here is are was were be been it its of to in on at by for with "
    "and or but as from into onto than then so very some any each every one picture image photo shows "
    "showing".split()
)


@dataclass
class GenerativeExample:
    image: np.ndarray | None  # [C, H, W] as stored; None for text-only examples
    prompt: str  # conditioning text, never a target ("" for none)
    target: str  # the text to generate
    # A question's answer, generated after ``target`` (text-only QA documents: the target is "caption. question").
    # The answer of an image + question example is its whole target, and a caption has none: both leave it "".
    answer: str = ""


def to_example(sample: Sample, with_image: bool) -> GenerativeExample:
    question = sample.meta.get("question")
    if not with_image:
        if question is None:
            return GenerativeExample(None, "", sample.caption)
        # qa_document(caption, question, answer) split before the answer (byte-level BPE pre-tokenises at
        # spaces, so the two pieces encode to the same tokens as the whole document).
        return GenerativeExample(None, "", qa_document(sample.caption, question, "").rstrip(), sample.meta["answer"])
    if question is None:
        return GenerativeExample(sample.image, "", sample.caption)
    return GenerativeExample(sample.image, question, sample.meta["answer"])


def encode_examples(tokenizer: TextTokenizer, examples: list[GenerativeExample], context_length: int) -> dict:
    """-> ``text_ids``, ``text_mask``, ``target_mask``, ``answer_mask``, ``content_mask``, ``content_word_mask``,
    each [B, L].

    L is the longest example, at most ``context_length``: padding costs compute in a decoder, and a
    question with its answer is far shorter than the context. A too-long target is cut to fit and
    keeps its EOS; a prompt that leaves no room raises DataError.
    """
    rows = []
    for example in examples:
        prompt = [tokenizer.bos_id] + (tokenizer.encode(example.prompt, special_tokens=False) if example.prompt else [])
        target = tokenizer.encode(example.target, special_tokens=False)
        answer = tokenizer.encode(example.answer, special_tokens=False) if example.answer else []
        room = context_length - len(prompt) - 1  # the EOS always fits
        if room < 1:
            raise DataError(f"The prompt {example.prompt!r} takes {len(prompt)} tokens, leaving no room for an "
                            f"answer within data.context_length={context_length}; raise data.context_length.")
        # A too-long QA document loses the end of its caption and question, never its answer.
        body = target[: max(room - len(answer), 0)] + answer[:room]
        # Answer tokens counted from the end, EOS included: a question's target (a prompt) is all answer, a
        # caption or plain text (no prompt, no answer) has none.
        if answer:
            answer_len = min(len(answer), room) + 1
        else:
            answer_len = len(body) + 1 if example.prompt else 0
        rows.append((prompt, body + [tokenizer.eos_id], answer_len))
    length = max(len(prompt) + len(target) for prompt, target, _ in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_id, dtype=torch.long)
    target_mask = torch.zeros(len(rows), length, dtype=torch.bool)
    answer_mask = torch.zeros(len(rows), length, dtype=torch.bool)
    content_mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for row, (prompt, target, answer_len) in enumerate(rows):
        end = len(prompt) + len(target)
        ids[row, :end] = torch.tensor(prompt + target)
        target_mask[row, len(prompt) : end] = True
        answer_mask[row, end - answer_len : end] = True
        content_mask[row, len(prompt) : end - 1] = True  # the target's own words, without its EOS
    function_ids = torch.tensor(sorted(function_word_ids(tokenizer)), dtype=torch.long)
    content_word_mask = content_mask & ~torch.isin(ids, function_ids)
    return {"text_ids": ids, "text_mask": ids != tokenizer.pad_id, "target_mask": target_mask,
            "answer_mask": answer_mask, "content_mask": content_mask, "content_word_mask": content_word_mask}


def function_word_ids(tokenizer: TextTokenizer) -> set[int]:
    """Ids of the tokens that are a whole function word (~60 short encodes: negligible beside a training step)."""
    ids = (tokenizer.encode(word, special_tokens=False) for word in FUNCTION_WORDS)
    return {only for only, *rest in ids if not rest}


def encode_prompts(tokenizer: TextTokenizer, prompts: list[str],
                   context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[BOS] prompt`` for each prompt, LEFT padded -> ids [B, L], mask [B, L] (True = real)."""
    rows = [[tokenizer.bos_id] + (tokenizer.encode(p, special_tokens=False) if p else []) for p in prompts]
    longest = max(map(len, rows))
    if longest > context_length:
        raise DataError(f"A prompt of {longest} tokens does not fit data.context_length={context_length}; "
                        "shorten the question.")
    ids = torch.full((len(rows), longest), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, longest - len(row) :] = torch.tensor(row)
        mask[i, longest - len(row) :] = True
    return ids, mask


def collate_generative(source: Source, indices: list[int], tokenizer: TextTokenizer, context_length: int,
                       transform: ImageTransform, with_image: bool = True) -> dict:
    """One training batch of generative examples (``images`` is None for text-only batches)."""
    samples, skips = read_samples(source, indices)
    if not samples:
        return {"skipped": skips, "n_seen": len(indices)}
    examples = [to_example(s, with_image) for s in samples]
    images = channel_ids = None
    if with_image:
        images = transform([e.image for e in examples])  # [B, C, H, W]
        channel_ids = torch.arange(examples[0].image.shape[0]).expand(len(examples), -1)  # [B, C]
    return {
        "images": images,
        "channel_ids": channel_ids,
        **encode_examples(tokenizer, examples, context_length),
        "keys": [s.key for s in samples],
        "prompts": [e.prompt for e in examples],
        "targets": [e.target for e in examples],
        "skipped": skips,
        "n_seen": len(indices),
    }

