"""The text tower alone, trained by masked language modelling before contrastive training.

"Tiny language models" (Rg32601/Tiny-Language-Models, METHODS.md catalogue #30) pre-train small
BERT-style encoders on text and find the pre-training helps a small model more as its data grows.
Here the dual encoder's own text tower (``TextTransformer``) is trained on captions with BERT's
masking (15% of word tokens; 80% [MASK], 10% random word, 10% unchanged: ``mask_tokens``) and an MLM
head. The run saves ``text.*`` weights under the names a dual encoder uses, so a contrastive run starts
from them with ``model.init_from=[RUN]`` and ``model.init_modules=[text]`` (the head is left behind).

With ``model.text.pool=mean`` the tower attends both ways, as BERT; with CLIP's ``eot`` pooling it is
causal, and each masked token is predicted from itself and the words before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from vlalign.models.cross_modal import IGNORE, MaskedTokenHead, mask_tokens
from vlalign.models.text import TextTransformer

MLM_PROBABILITY = 0.15  # BERT (Devlin et al. 2019 §3.1)


@dataclass
class MaskedTextOutput:
    logits: Tensor  # [M, V] at the M masked positions of the batch
    targets: Tensor  # [M] the original token ids there


class MaskedTextModel(nn.Module):
    def __init__(self, text: TextTransformer, vocab_size: int, probability: float = MLM_PROBABILITY):
        super().__init__()
        self.text = text
        self.mlm_head = MaskedTokenHead(text.width, vocab_size)
        self.vocab_size, self.probability = vocab_size, probability

    def forward(self, images: Tensor | None, text_ids: Tensor, text_mask: Tensor,
                channel_ids: Tensor | None = None) -> MaskedTextOutput:
        """``images``/``channel_ids`` are ignored (the trainer's common call); text_ids, text_mask [B, L].
        Masking draws from the global torch RNG, so a seeded run masks the same tokens."""
        masked, targets = mask_tokens(text_ids, text_mask.bool(), self.probability, self.vocab_size)  # [B, L] each
        tokens = self.text(masked, text_mask.bool()).tokens  # [B, L, D]
        picked = targets != IGNORE  # [B, L]
        return MaskedTextOutput(self.mlm_head(tokens[picked]), targets[picked])

    def no_weight_decay(self) -> set[str]:
        """Norms, biases, embeddings and positions, as the dual encoder."""
        return {name for name, param in self.named_parameters()
                if param.ndim < 2 or "pos" in name or "embedding" in name}
