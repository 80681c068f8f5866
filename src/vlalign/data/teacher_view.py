"""SALT's teacher in the batch: a small trained dual encoder's embeddings of each pair.

The teacher reads the raw samples with its own preprocessing and tokenizer, so it need not share the
student's image size or vocabulary. It is any object with ``encode_image(arrays)`` and
``encode_text(strings)`` returning unit-norm [B, E] embeddings (``vlalign.api.Aligner``).
"""

from __future__ import annotations

import torch


class TeacherView:
    """Adds ``teacher_image_embeds`` and ``teacher_text_embeds`` [B, E_teacher] to a batch."""

    def __init__(self, teacher):
        self.teacher = teacher

    @torch.inference_mode()
    def __call__(self, samples, tokenizer, context_length, transform) -> dict:
        return {"teacher_image_embeds": self.teacher.encode_image([s.image for s in samples]).clone(),
                "teacher_text_embeds": self.teacher.encode_text([s.caption for s in samples]).clone()}
