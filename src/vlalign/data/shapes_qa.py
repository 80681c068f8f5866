"""Visual question answering on the shapes world: every (scene, question) pair as one sample.

The instruction data of the generative pipeline (LLaVA stage 2 / CG-VLM, METHODS.md §3.4). Sample
``k`` is question ``q`` of scene ``i`` of a ``ShapesWorld``; its image and caption are the scene's,
and ``meta`` adds ``question``, ``answer`` and ``question_type`` (colour, shape, size, count,
relation; see ``shapes.questions``). Answers are true by construction.
"""

from __future__ import annotations

from vlalign.data.sample import Sample
from vlalign.data.shapes import ShapesWorld, questions


QUESTION_TYPES = ("colour", "shape", "size", "count", "relation")


class ShapesQA:
    """All questions of ``world``'s scenes (or those of ``types``) as a map-style ``Source`` (scene-major order).

    ``types`` serves e.g. a language model's pre-training: colour and shape questions are ~27% of all, and
    they are the ones that need the caption read (docs/cgvlm.md)."""

    def __init__(self, world: ShapesWorld, types: tuple[str, ...] | None = None):
        self.world = world
        self.name = world.name.replace("shapes:", "shapes-qa:", 1) + (f",types={'+'.join(types)}" if types else "")
        self.classes, self.channel_names = world.classes, world.channel_names
        # (scene index, question, answer, type) of every item; drawing scenes is cheap, rendering is not.
        self.items = [(i, *qa) for i in range(len(world)) for qa in questions(world.scene(i))
                      if types is None or qa[2] in types]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> Sample:
        if not 0 <= k < len(self.items):
            raise IndexError(f"index {k} out of range for {self.name} with {len(self.items)} questions")
        scene_index, question, answer, kind = self.items[k]
        sample = self.world[scene_index]
        sample.key = f"{sample.key}-q{k}"
        sample.meta |= {"question": question, "answer": answer, "question_type": kind}
        return sample

    def texts(self) -> list[str]:
        """Every item as plain text, caption then question and answer (the language model's corpus)."""
        captions = {}
        out = []
        for scene_index, question, answer, _ in self.items:
            if scene_index not in captions:
                captions[scene_index] = self.world.caption(scene_index)
            out.append(qa_document(captions[scene_index], question, answer))
        return out


def qa_document(caption: str, question: str, answer: str) -> str:
    """One plain-text document: what a text-only language model reads about a scene."""
    return f"{caption}. {question} {answer}"
