"""Rule-based hard-negative captions for contrastive training.

A negative is the true caption with one concept word replaced by another word of the same kind, so
that it differs from the truth in exactly one structured concept: "a small red circle on the left"
-> "a small red star on the left". Training the image against such captions (as extra text
negatives) is the recipe of NegCLIP (Yuksekgonul et al. 2023, "When and why vision-language models
behave like bags-of-words", §5) and of the rule-based negatives of SVLC (Doveh et al. 2023,
"Teaching Structured Vision&Language Concepts", §3.1: colour, size, material, state, action word lists).

Why it matters: with random in-batch negatives a caption is usually told apart from the others by
its easiest concept (on the shapes world: colours and positions), so a concept that is never needed
(shape) is never learned. A negative that differs only in that concept makes it needed.

Kinds (``objective.hard_negatives``):

- ``colour``: one colour word -> another colour;
- ``size``: one size word -> its opposite size;
- ``shape``: one shape / object noun -> another of the list (the shapes world's shapes plus common
  geometric nouns);
- ``relation``: one spatial word -> its opposite (left/right, above/below, top/bottom).

A caption with no word of the chosen kinds gets no negative (``valid`` is False and the loss masks
it). The draw is a pure function of ``(seed, sample key)``, so a resumed run sees the same negatives.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

from vlalign.data.shapes import COLOURS, SHAPES

NEGATIVE_KINDS = ("colour", "size", "shape", "relation")

_COLOUR_WORDS = (*COLOURS, "black", "brown", "pink", "grey")
_SHAPE_WORDS = (*SHAPES, "rectangle", "oval", "pentagon")
_SIZE_OPPOSITES = {"small": "large", "large": "small", "big": "small", "tiny": "large"}
_RELATION_OPPOSITES = {"left": "right", "right": "left", "above": "below", "below": "above",
                       "top": "bottom", "bottom": "top"}


@dataclass(frozen=True)
class _Rule:
    words: tuple[str, ...]  # the words this rule can replace
    opposites: dict[str, str] | None  # fixed replacement per word, or None: any other word of the list


_RULES = {
    "colour": _Rule(_COLOUR_WORDS, None),
    "size": _Rule(tuple(_SIZE_OPPOSITES), _SIZE_OPPOSITES),
    "shape": _Rule(_SHAPE_WORDS, None),
    "relation": _Rule(tuple(_RELATION_OPPOSITES), _RELATION_OPPOSITES),
}
_WORD = re.compile(r"[a-z]+")


def word_swap_negative(caption: str, kinds: tuple[str, ...], rng: np.random.Generator) -> str | None:
    """The caption with one word of one of ``kinds`` replaced, or None when it has no such word.

    The replaced occurrence is drawn uniformly among all candidate words of every kind, so a kind
    is chosen as often as its words occur; the replacement keeps the original capitalisation.
    """
    candidates = []  # (start, end, kind) of every replaceable word
    for match in _WORD.finditer(caption.lower()):
        for kind in kinds:
            if match.group() in _RULES[kind].words:
                candidates.append((match.start(), match.end(), kind))
    if not candidates:
        return None
    start, end, kind = candidates[int(rng.integers(len(candidates)))]
    word = caption[start:end].lower()
    rule = _RULES[kind]
    if rule.opposites is not None:
        new = rule.opposites[word]
    else:
        others = [w for w in rule.words if w != word]
        new = others[int(rng.integers(len(others)))]
    if caption[start].isupper():
        new = new.capitalize()
    return caption[:start] + new + caption[end:]


def negatives_for(captions: list[str], keys: list[str], kinds: tuple[str, ...],
                  seed: int) -> tuple[list[str], list[bool]]:
    """One negative per caption (the caption itself where none exists) and whether each is real.

    ``keys`` are the samples' keys: the draw for a sample depends only on ``(seed, key)``, not on
    the batch it lands in.
    """
    negatives, valid = [], []
    for caption, key in zip(captions, keys):
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        negative = word_swap_negative(caption, kinds, rng)
        negatives.append(caption if negative is None else negative)
        valid.append(negative is not None)
    return negatives, valid
