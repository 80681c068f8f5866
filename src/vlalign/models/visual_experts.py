"""Mono-InternVL's visual experts: a second, trainable FFN in every block of a frozen language model.

Mono-InternVL (Luo et al. 2024, arXiv 2410.08202, §3.1) embeds visual parameters into a pre-trained
LLM as a multimodal mixture of experts: attention is shared, but each block's feed-forward layer is
doubled, and tokens are routed by modality, image tokens to the visual expert, text tokens to the
LLM's own FFN. Only the visual side is trained ("delta tuning", §3.2): the language weights stay
frozen, so a text-only input takes exactly the original computation and the LLM's language ability
cannot be forgotten. The experts start as copies of the LLM's FFNs (the paper initialises them from
the pre-trained weights).

Here the routing is by position (``CausalDecoder.forward(visual_positions=P)``: the image prefix of a
``VisionLanguageModel``). The paper's patch embedding and its progressive three-stage EViP schedule
are not reproduced: the image tokens come from this library's ViT and connector.
"""

from __future__ import annotations

import copy

from torch import nn

from vlalign.models.decoder import CausalDecoder


def _start_from_language_ffn(state_dict: dict, module_prefix: str, *args) -> None:
    """Load pre-hook of a block: a checkpoint without visual experts (a language model's) starts them as
    copies of its FFN; one with experts loads them as saved."""
    for name, value in list(state_dict.items()):
        if name.startswith(f"{module_prefix}mlp."):
            state_dict.setdefault(f"{module_prefix}visual_mlp.{name[len(module_prefix) + len('mlp.'):]}", value)


def add_visual_experts(decoder: CausalDecoder) -> list[nn.Module]:
    """Give every block a visual FFN expert, a copy of its FFN; returns the experts (in block order).

    Loading a language-model checkpoint afterwards (``model.init_from``) copies its FFNs into the
    experts too, so they always start from the weights the text side uses.
    """
    experts = []
    for index, block in enumerate(decoder.blocks):
        if block.visual_mlp is not None:
            raise ValueError(f"block {index} already has a visual expert")
        block.visual_mlp = copy.deepcopy(block.mlp)
        block._register_load_state_dict_pre_hook(_start_from_language_ffn)
        experts.append(block.visual_mlp)
    return experts


def visual_experts(decoder: CausalDecoder) -> list[nn.Module]:
    """The decoder's visual experts ([] when it has none)."""
    return [block.visual_mlp for block in decoder.blocks if block.visual_mlp is not None]
