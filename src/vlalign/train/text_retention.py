"""The language model's loss on a fixed held-out text set, to watch its retention during multimodal training.

DeepSeek-VL (§3.5) and the stability-gap paper track exactly this: how much of its text ability the
language model keeps while it learns images. The set (``data.text_heldout``) is encoded once as text-only
examples (``vlalign.data.generative``); ``loss`` is the token-weighted mean next-token cross-entropy over
every target token of the set, the same quantity as the generative loss of one batch holding all of it.
"""

from __future__ import annotations

import functools

import torch

from vlalign.data.generative import encode_examples, to_example
from vlalign.data.loader import read_samples
from vlalign.data.sample import Source
from vlalign.data.tokenizer import TextTokenizer
from vlalign.device import model_device, to_device
from vlalign.objectives.caption import caption_loss, next_token_targets


class HeldoutText:
    def __init__(self, source: Source, tokenizer: TextTokenizer, context_length: int, batch_size: int = 64):
        samples, _ = read_samples(source, list(range(len(source))))
        examples = [to_example(sample, with_image=False) for sample in samples]
        self.batches = [encode_examples(tokenizer, examples[i : i + batch_size], context_length)
                        for i in range(0, len(examples), batch_size)]
        self.num_tokens = sum(int(b["target_mask"].sum()) for b in self.batches)

    @torch.no_grad()
    def loss(self, model: torch.nn.Module) -> float:
        """Mean cross-entropy per target token of the whole set, the model run text-only in eval mode."""
        was_training = model.training
        model.eval()
        total = 0.0
        device = model_device(model)
        for batch in map(functools.partial(to_device, device=device), self.batches):
            out = model(None, batch["text_ids"], batch["text_mask"], None)
            targets, loss_mask = next_token_targets(batch["text_ids"], batch["target_mask"], out.prefix_len)
            total += caption_loss(out.logits, targets, loss_mask, num_tokens=self.num_tokens).item()
        model.train(was_training)
        return total
