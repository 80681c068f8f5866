"""Positive paraphrases: a second caption of the same content, an extra positive text in the contrastive loss.

SVLC (Doveh et al. 2023, "Teaching Structured Vision&Language Concepts") trains with positive
paraphrases next to its rule-based negatives: with negatives alone the text tower may learn to tell a
caption from its one-word swap by surface form (word order, template), and a paraphrase that says the
same in other words anchors the meaning instead.

- A shapes-world sample (its ``meta["scene"]`` is known) gets another ``describe`` of its scene drawn
  with another rng: another template, object order and (where several hold) relation.
- Any other caption gets a rule-based rewrite that keeps the meaning: a relation between two objects
  read from the other side, "a red circle to the left of a blue star" -> "a blue star to the right of
  a red circle".
- No rule applies (or every draw repeats the caption): no paraphrase (``valid`` False; the loss masks it).

The draw is a pure function of ``(seed, sample key)``, so a resumed run sees the same paraphrases.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from vlalign.data.sample import Sample
from vlalign.data.shapes import Scene, describe

# Each relation and its converse: "A rel B" says the same as "B converse A".
CONVERSE_RELATIONS = {"to the left of": "to the right of", "to the right of": "to the left of",
                      "above": "below", "below": "above", "in front of": "behind", "behind": "in front of"}
_ARTICLE = r"(?:a|an|the)"
_WORD = rf"(?!{_ARTICLE}\b)[a-z]+"  # a word of a noun phrase: never an article, so a phrase is one object
_PHRASE = rf"{_ARTICLE} {_WORD}(?: {_WORD}){{0,3}}"
_RELATION_CLAUSE = re.compile(
    rf"\b(?P<a>{_PHRASE}) (?P<rel>{'|'.join(map(re.escape, CONVERSE_RELATIONS))}) (?P<b>{_PHRASE})"
    r"(?=[,.;:!?]|$)",  # the second object ends the clause, so "a blue star in the centre" is left alone
    re.IGNORECASE)
_SCENE_DRAWS = 8  # redraws of a scene's description before giving up on one that differs from the caption


def converse_paraphrase(caption: str) -> str | None:
    """The caption with its first "A <relation> B" clause read from B's side, or None when it has none."""
    match = _RELATION_CLAUSE.search(caption)
    if match is None:
        return None
    a, rel, b = match.group("a"), match.group("rel"), match.group("b")
    if match.start() == 0 and caption[0].isupper():  # "A red circle ..." -> "A blue star ... a red circle"
        a, b = a[0].lower() + a[1:], b[0].upper() + b[1:]
    swapped = f"{b} {CONVERSE_RELATIONS[rel.lower()]} {a}"
    return caption[:match.start()] + swapped + caption[match.end():]


def scene_paraphrase(scene: Scene, caption: str, rng: np.random.Generator) -> str | None:
    """Another description of ``scene`` than ``caption`` (the first of a few draws that differs), or None."""
    for _ in range(_SCENE_DRAWS):
        text = describe(scene, rng)
        if text != caption:
            return text
    return None


def paraphrase(sample: Sample, seed: int) -> str | None:
    """A paraphrase of ``sample.caption``: a redrawn description of its shapes scene when the sample has
    one, else the converse-relation rewrite; None when neither gives another text."""
    scene = sample.meta.get("scene")
    if isinstance(scene, Scene):
        # Stream 1: independent of the hard negatives' draw for the same key (stream 0, vlalign.data.negatives).
        rng = np.random.default_rng([seed, zlib.crc32(sample.key.encode()), 1])
        return scene_paraphrase(scene, sample.caption, rng)
    return converse_paraphrase(sample.caption)


def paraphrases_for(samples: list[Sample], seed: int) -> tuple[list[str], list[bool]]:
    """One paraphrase per sample (its caption where none exists) and whether each is real."""
    texts, valid = [], []
    for sample in samples:
        text = paraphrase(sample, seed)
        texts.append(sample.caption if text is None else text)
        valid.append(text is not None)
    return texts, valid
