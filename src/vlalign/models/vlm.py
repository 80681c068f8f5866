"""LLaVA-style vision-language model: ViT patch tokens -> connector -> prefix of a causal language model.

The setting of CG-VLM (Liu et al. 2023, arXiv 2311.17945; METHODS.md §3.2): a vision transformer's
patch features are mapped by a small connector (LLaVA's linear projector, or LLaVA-1.5's two-layer
MLP) into the language model's input-embedding space and placed before the text as a prefix.
``forward`` returns features: the LM's logits, the projected patches (which CG-VLM's contrastive loss
pools) and the LM's input token embeddings of the text (which it compares them with). Losses live in
``vlalign.objectives``.

Without an image (text-only use, and the "lm" arch, which has no vision tower at all) the prefix is
``num_image_tokens`` zero vectors. The decoder's positions are learned and absolute, so reserving the
image slots keeps a language model pre-trained on text alone reading its text at the same positions
once images fill them. (LLaVA's LLaMA uses relative rotary positions and needs no reservation.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlalign.models.decoder import CausalDecoder
from vlalign.models.visual_experts import visual_experts
from vlalign.models.packing import PackedBatch, block_causal_mask, from_rows, pack, to_rows
from vlalign.models.vit import VisionTransformer


class LinearConnector(nn.Module):
    """LLaVA (Liu et al. 2023 §4.1): one linear map from ViT width to LM width."""

    def __init__(self, vision_width: int, lm_width: int):
        super().__init__()
        self.proj = nn.Linear(vision_width, lm_width)

    def forward(self, patches: Tensor) -> Tensor:
        return self.proj(patches)  # [B, P, D_lm]


class MLPConnector(nn.Module):
    """LLaVA-1.5 (Liu et al. 2023b, "mlp2x_gelu"): Linear -> GELU -> Linear.

    ``hidden`` (default: the LM width) fixed across language models makes ``fc1`` LM-independent: with
    the ViT it is the visual prompt generator that VPGTrans moves to another LM, ``fc2`` its projector.
    """

    def __init__(self, vision_width: int, lm_width: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or lm_width
        self.fc1 = nn.Linear(vision_width, hidden)
        self.fc2 = nn.Linear(hidden, lm_width)

    def forward(self, patches: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(patches)))  # [B, P, D_lm]


CONNECTORS = {"linear": LinearConnector, "mlp": MLPConnector}


@dataclass
class VLMOutput:
    logits: Tensor  # [B, P+L, V] over [prefix, text]
    prefix_len: int  # P: logits[:, P + l] follows text token l
    token_embeds: Tensor  # [B, L, D] the LM's input embeddings of the text ids (no positions)
    image_tokens: Tensor | None  # [B, P, D] connector outputs; None when no image was given
    image_mask: Tensor | None  # [B, P] bool, True = real patch token; None when all are real
    logit_scale: Tensor | None  # [] exp of the learnable contrastive log-scale (1/τ); None without vision
    packing: PackedBatch | None = None  # how the batch was packed into rows (``pack_length`` > 0), else None


class VisionLanguageModel(nn.Module):
    """``[connector(ViT(image).tokens), text] -> causal LM``; ``vision``/``connector`` None = text-only LM.
    ``features`` (optional) replaces the last-layer tokens the connector reads (``features(vision, images,
    channel_ids) -> (tokens, mask)``)."""

    def __init__(self, decoder: CausalDecoder, num_image_tokens: int, vision: VisionTransformer | None = None,
                 connector: nn.Module | None = None, init_temperature: float = 0.07,
                 features: nn.Module | None = None):
        super().__init__()
        if (vision is None) != (connector is None):
            raise ValueError("give both a vision tower and a connector, or neither (a text-only language model)")
        self.vision = vision
        self.connector = connector
        self.decoder = decoder
        self.num_image_tokens = num_image_tokens
        # > 0: run the decoder on packed rows of this many entries (``vlalign.models.packing``); the
        # outputs are unpacked again, so everything downstream sees the padded layout.
        self.pack_length = 0
        # What the connector reads: the last layer's tokens (None), or e.g. Florence-VL's depth-breadth
        # fusion of several layers and views (``vlalign.models.depth_breadth``).
        self.features = features
        # CG-VLM's contrastive temperature, learnable as in CLIP (METHODS.md §3.3).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature))) if vision is not None else None

    def project_images(self, images: Tensor, channel_ids: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """[B, C, H, W] pixels -> projected patch tokens [B, P, D] and their mask [B, P] (or None)."""
        if self.vision is None:
            raise ValueError("this model is a text-only language model (arch 'lm'): it takes no images")
        if self.features is not None:
            tokens, mask = self.features(self.vision, images, channel_ids)  # [B, P, D·k]
            return self.connector(tokens), mask
        features = self.vision(images, channel_ids)
        return self.connector(features.tokens), features.mask

    def prefix(self, images: Tensor | None, channel_ids: Tensor | None, batch: int) -> tuple[Tensor, Tensor | None]:
        """The image prefix [B, P, D] and its mask; zeros (all real) when there is no image."""
        if images is not None:
            return self.project_images(images, channel_ids)
        weight = self.decoder.embed_tokens.weight
        return weight.new_zeros(batch, self.num_image_tokens, weight.shape[1]), None

    def forward(self, images: Tensor | None, text_ids: Tensor, text_mask: Tensor,
                channel_ids: Tensor | None = None) -> VLMOutput:
        """images [B, C, H, W] or None; text_ids, text_mask [B, L] (True = real, right padded)."""
        batch = text_ids.shape[0]
        prefix, image_mask = self.prefix(images, channel_ids, batch)
        mask = torch.cat([_real(image_mask, prefix), text_mask.bool()], dim=1)  # [B, P+L]
        token_embeds = self.decoder.embed(text_ids)  # [B, L, D]
        packed = None
        if self.pack_length:
            if visual_experts(self.decoder):
                raise ValueError("data.pack_length does not support visual experts (model.vlm.visual_experts): "
                                 "packed rows lose the image/text position split the experts route by")
            packed = pack(mask, self.pack_length)
            embeds = torch.cat([prefix.to(token_embeds.dtype), token_embeds], dim=1)  # [B, P+L, D]
            rows = self.decoder.forward_packed(to_rows(embeds, packed), packed.positions,
                                               block_causal_mask(packed.segments))
            logits = from_rows(rows.logits, packed)  # [B, P+L, V]; zeros at padding, which is never a target
        else:
            visual_positions = prefix.shape[1] if images is not None else 0  # Mono-InternVL routing
            logits = self.decoder(text_ids, prefix, mask, visual_positions=visual_positions).logits
        scale = self.logit_scale.exp() if self.logit_scale is not None else None
        return VLMOutput(logits=logits, prefix_len=prefix.shape[1], token_embeds=token_embeds,
                         image_tokens=prefix if images is not None else None, image_mask=image_mask,
                         logit_scale=scale, packing=packed)

    @torch.no_grad()
    def generate(self, images: Tensor | None, prompt_ids: Tensor, prompt_mask: Tensor, max_new_tokens: int,
                 eos_id: int | None = None, temperature: float = 0.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, channel_ids: Tensor | None = None) -> Tensor:
        """Continue ``[image prefix, prompt]``; prompts LEFT padded. -> new token ids [B, T <= max_new_tokens]."""
        prefix, image_mask = self.prefix(images, channel_ids, prompt_ids.shape[0])
        mask = torch.cat([_real(image_mask, prefix), prompt_mask.bool()], dim=1)
        return self.decoder.generate(prompt_ids, prefix, max_new_tokens=max_new_tokens, eos_id=eos_id,
                                     temperature=temperature, top_k=top_k, generator=generator, attention_mask=mask,
                                     visual_positions=prefix.shape[1] if images is not None else 0)

    def freeze(self, names: list[str]) -> None:
        """Fix the weights of the named modules: top-level ones ("vision", "connector", "decoder"), their
        sub-modules by dotted path ("connector.fc1"), and "visual_experts" (Mono-InternVL's, which "decoder"
        leaves trainable: they are the point of freezing the language model).

        Top-level names the model does not have (e.g. "vision" in a text-only LM) are ignored; a dotted path
        into a module it has must exist.
        """
        for name in names:
            top = name.split(".")[0]
            if not isinstance(getattr(self, top, None), nn.Module):
                continue
            try:
                self.get_submodule(name).requires_grad_(False)
            except AttributeError:
                raise ValueError(f"model.vlm.freeze names '{name}', which this model does not have; e.g. "
                                 "connector.fc1 (the mlp connector's first layer)") from None
        for expert in visual_experts(self.decoder):
            expert.requires_grad_("visual_experts" not in names)

    def no_weight_decay(self) -> set[str]:
        """Norms, biases, embedding tables, positions, the CLS token and the temperature."""
        return {name for name, param in self.named_parameters()
                if param.ndim < 2 or "pos" in name or "embed" in name or "cls_token" in name}


def _real(mask: Tensor | None, prefix: Tensor) -> Tensor:
    """The prefix mask, all True when the prefix has none."""
    if mask is not None:
        return mask.bool()
    return torch.ones(prefix.shape[:2], dtype=torch.bool, device=prefix.device)
