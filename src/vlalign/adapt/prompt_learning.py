"""Prompt learning on a frozen dual encoder (CoOp, ``vlalign.models.prompt_context``).

Only the context vectors train, on labelled image embeddings computed once by the frozen image tower;
the class embeddings are recomputed through the frozen text tower at every step, so a few hundred steps
on a few dozen labels take seconds on a CPU.
"""

from __future__ import annotations

import torch

from vlalign.models.prompt_context import PromptContext
from vlalign.objectives.supervised import classification_loss


def tokenize_class_names(tokenizer, class_names: list[str], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class names -> ids, mask [K, L] without the BOS token (the context stands in its place, see PromptContext)."""
    ids, mask = tokenizer(class_names, context_length)
    return ids[:, 1:], mask[:, 1:]


def prompt_logits(model, context: PromptContext, class_ids: torch.Tensor, class_mask: torch.Tensor,
                  image_embeds: torch.Tensor) -> torch.Tensor:
    """image_embeds [N, E] unit-norm -> class logits [N, K] at the model's logit scale."""
    classes = context.class_embeddings(model, class_ids, class_mask)  # [K, E]
    return model.logit_scale.exp().detach() * image_embeds @ classes.t()


def train_prompt_context(model, context: PromptContext, class_ids: torch.Tensor, class_mask: torch.Tensor,
                         image_embeds: torch.Tensor, labels: torch.Tensor, steps: int = 100,
                         lr: float = 2e-3) -> PromptContext:
    """Full-batch AdamW on the context alone (the model's weights are left untouched and get no gradient)."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        optimizer = torch.optim.AdamW(context.parameters(), lr=lr, weight_decay=0.0)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = classification_loss(prompt_logits(model, context, class_ids, class_mask, image_embeds), labels)
            loss.backward()
            optimizer.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return context
