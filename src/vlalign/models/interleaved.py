"""VL-GPT's unified decoder (Zhu et al. 2023, arXiv 2312.09251; METHODS.md §4 row 8): one causal transformer
over interleaved image-text sequences, where an image enters as a *continuous* embedding (VL-GPT's image
tokenizer output; here a frozen CLIP image embedding) and leaves through a regression head, so the same model
describes images (next-token text after an image) and "generates" them (the next image embedding after text).

A sequence is token ids with ``image_token_id`` marking each image slot; ``image_embeds`` [B, K, E] fills the
slots of a row in order. ``forward`` returns the text logits and the regression head's prediction at every
position: position p predicts the image of slot p + 1 (the image's own slot reads the true embedding, as text
teacher forcing does). VL-GPT's diffusion detokenizer, which turns predicted embeddings back into pixels, is
out of reach here; ``vlalign.eval`` checks predicted embeddings by retrieval instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlalign.models.decoder import CausalDecoder


@dataclass
class InterleavedOutput:
    logits: Tensor  # [B, S, V] next-token logits at every position
    predicted_images: Tensor  # [B, S, E] the regression head: position p's guess of an image at slot p + 1


class InterleavedLM(nn.Module):
    """``decoder`` over text tokens and projected image embeddings (``image_in``), with ``image_out`` regressing
    image embeddings of width ``image_dim`` from the final hidden states."""

    def __init__(self, decoder: CausalDecoder, image_dim: int, image_token_id: int):
        super().__init__()
        if not 0 <= image_token_id < decoder.cfg.vocab_size:
            raise ValueError(f"image_token_id {image_token_id} is outside the decoder's vocabulary "
                             f"({decoder.cfg.vocab_size}); reserve an id for the image slot")
        self.decoder = decoder
        self.image_token_id = image_token_id
        self.image_in = nn.Linear(image_dim, decoder.cfg.width)
        self.image_out = nn.Linear(decoder.cfg.width, image_dim)

    def embed(self, ids: Tensor, image_embeds: Tensor | None) -> Tensor:
        """[B, S] ids and [B, K, E] images -> [B, S, D]; slot j of a row takes that row's image j."""
        x = self.decoder.embed(ids)  # [B, S, D]
        slots = ids == self.image_token_id  # [B, S]
        if not bool(slots.any()):
            return x
        counts = slots.sum(1)
        if image_embeds is None or bool((counts > image_embeds.shape[1]).any()):
            raise ValueError(f"rows hold up to {int(counts.max())} image slots but "
                             f"{0 if image_embeds is None else image_embeds.shape[1]} images per row were given")
        order = slots.long().cumsum(1) - 1  # [B, S]: which image of the row each slot takes
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(ids)
        projected = self.image_in(image_embeds)  # [B, K, D]
        return torch.where(slots[..., None], projected[rows, order.clamp_min(0)], x)

    def forward(self, ids: Tensor, mask: Tensor, image_embeds: Tensor | None = None) -> InterleavedOutput:
        """ids, mask [B, S] (True = real, right padded); image_embeds [B, K, E]."""
        empty = ids[:, :0]
        out = self.decoder(empty, self.embed(ids, image_embeds), mask)
        return InterleavedOutput(out.logits, self.image_out(out.hidden_states[-1]))

    @torch.no_grad()
    def predict_image(self, ids: Tensor, mask: Tensor, image_embeds: Tensor | None = None) -> Tensor:
        """The embedding of the image that would come next after each (right-padded) row: [B, E]."""
        predicted = self(ids, mask, image_embeds).predicted_images  # [B, S, E]
        last = mask.long().sum(1) - 1
        return predicted[torch.arange(ids.shape[0]), last]
