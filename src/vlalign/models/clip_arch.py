"""The shape of a CLIP model (ViT image tower, causal text tower, two bias-free projections, a learned
logit scale; Radford et al. 2021) and the vlalign config that builds the same network.

Hugging Face's ``CLIPModel`` and open_clip's ``CLIP`` are this one architecture under two sets of names
(``vlalign.models.clip_names``, ``vlalign.models.open_clip_names``). Its vlalign form is the standard
ViT with ``ln_pre``, a bias-free patch embedding, CLS pooling, the EOT-pooled causal text tower, and
each tower's MLP activation (``quick_gelu`` for OpenAI's weights, ``gelu`` for many open_clip ones).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from vlalign.config import RunConfig, validate
from vlalign.errors import CheckpointError
from vlalign.models.layers import ACTIVATIONS
from vlalign.models.registry import TEXT_SIZES, VISION_SIZES, spell_size, text_size, vision_size

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which every vlalign norm uses


@dataclass(frozen=True)
class ClipTower:
    width: int
    depth: int
    heads: int
    mlp: int  # hidden width of each block's MLP
    activation: str  # a key of vlalign.models.layers.ACTIVATIONS


@dataclass(frozen=True)
class ClipArchitecture:
    vision: ClipTower
    text: ClipTower
    image_size: int
    patch_size: int
    channels: int
    vocab_size: int  # CLIP's own vocabulary; a shifted-in tokenizer adds [PAD] (vlalign.data.clip_tokenizer)
    context_length: int
    embed_dim: int


def from_hf_config(config) -> ClipArchitecture:
    """A ``transformers.CLIPConfig`` -> its architecture; a setting vlalign cannot build is a CheckpointError."""
    v, t = config.vision_config, config.text_config
    for name, tower in (("vision", v), ("text", t)):
        if tower.hidden_act not in ACTIVATIONS:
            raise CheckpointError(f"the CLIP {name} tower uses hidden_act={tower.hidden_act!r}; vlalign builds "
                                  f"{', '.join(ACTIVATIONS)}.")
        if tower.layer_norm_eps != LAYER_NORM_EPS:
            raise CheckpointError(f"the CLIP {name} tower's layer_norm_eps is {tower.layer_norm_eps}; vlalign's "
                                  f"norms use {LAYER_NORM_EPS}.")
    return ClipArchitecture(
        vision=ClipTower(v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size, v.hidden_act),
        text=ClipTower(t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size, t.hidden_act),
        image_size=v.image_size, patch_size=v.patch_size, channels=v.num_channels, vocab_size=t.vocab_size,
        context_length=t.max_position_embeddings, embed_dim=config.projection_dim)


def hf_config(arch: ClipArchitecture, logit_scale: float, bos_id: int, eos_id: int, pad_id: int):
    """The ``transformers.CLIPConfig`` of ``arch``. ``eos_id`` is the real end-of-text id, so that ``CLIPTextModel``
    pools the first EOT of each row, as vlalign pools the last real token (the same one)."""
    from transformers import CLIPConfig

    v, t = arch.vision, arch.text
    text = dict(vocab_size=arch.vocab_size, hidden_size=t.width, intermediate_size=t.mlp, num_hidden_layers=t.depth,
                num_attention_heads=t.heads, max_position_embeddings=arch.context_length, hidden_act=t.activation,
                layer_norm_eps=LAYER_NORM_EPS, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    vision = dict(hidden_size=v.width, intermediate_size=v.mlp, num_hidden_layers=v.depth, num_attention_heads=v.heads,
                  num_channels=arch.channels, image_size=arch.image_size, patch_size=arch.patch_size,
                  hidden_act=v.activation, layer_norm_eps=LAYER_NORM_EPS)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=arch.embed_dim,
                      logit_scale_init_value=logit_scale)


def adopt(cfg: RunConfig, arch: ClipArchitecture, vocab_size: int) -> RunConfig:
    """``cfg`` with the towers, embedding width, image size and context length of ``arch``; ``vocab_size`` is the
    run tokenizer's (CLIP's plus [PAD] for a shifted-in CLIP vocabulary). Other settings (objective, head kind,
    adapters, data) stay the caller's."""
    cfg = copy.deepcopy(cfg)
    m, v, t = cfg.model, cfg.model.vision, cfg.model.text
    m.embed_dim = arch.embed_dim
    v.size = spell_size(arch.vision.width, arch.vision.depth, arch.vision.heads, arch.vision.mlp, VISION_SIZES)
    v.patch_size, v.in_channels, v.patch_embed, v.pool = arch.patch_size, arch.channels, "standard", "cls"
    v.ln_pre, v.patch_bias, v.activation = True, False, arch.vision.activation
    t.size = spell_size(arch.text.width, arch.text.depth, arch.text.heads, arch.text.mlp, TEXT_SIZES)
    t.tower, t.pool, t.vocab_size, t.activation = "vlalign", "eot", vocab_size, arch.text.activation
    t.committee, t.depth, t.prefix_tokens = 1, 0, 0
    cfg.data.image_size, cfg.data.context_length = arch.image_size, arch.context_length
    return validate(cfg, "the converted CLIP checkpoint's architecture")


def architecture_of(cfg: RunConfig, vocab_size: int) -> ClipArchitecture:
    """The inverse of ``adopt``: the architecture of ``cfg``'s towers (a config ``clip_blockers`` passes), with
    ``vocab_size`` tokens in CLIP's numbering."""
    m = cfg.model
    v, t = vision_size(m.vision.size), text_size(m.text.size)
    text_depth = m.text.depth or t.depth
    return ClipArchitecture(
        vision=ClipTower(v.width, v.depth, v.heads, round(v.width * v.mlp_ratio), m.vision.activation),
        text=ClipTower(t.width, text_depth, t.heads, round(t.width * t.mlp_ratio), m.text.activation),
        image_size=cfg.data.image_size, patch_size=m.vision.patch_size, channels=m.vision.in_channels,
        vocab_size=vocab_size, context_length=cfg.data.context_length, embed_dim=m.embed_dim)


def clip_blockers(cfg: RunConfig) -> list[str]:
    """Why ``CLIPModel`` cannot express this run's embeddings (empty: it can). LoRA merges into the weights;
    a patch-embedding bias folds into the positions (``vlalign.models.clip_names``); the sigmoid loss's logit
    bias has no place in CLIP and is left out (the embeddings do not read it)."""
    m, v, t = cfg.model, cfg.model.vision, cfg.model.text
    needs = {
        "model.arch=dual-encoder": m.arch == "dual-encoder",
        "model.head=projection": m.head == "projection",
        "model.vision.ln_pre=true": v.ln_pre,
        "model.vision.patch_embed=standard with 3 channels": v.patch_embed == "standard" and v.in_channels == 3,
        "model.vision.pool=cls": v.pool == "cls",
        "no token merging": not v.merge_r and not any(v.merge_schedule),
        "model.video.frames=0": not m.video.frames,
        "model.text.tower=vlalign, pool=eot, one tower without prefix":
            t.tower == "vlalign" and t.pool == "eot" and t.committee == 1 and not t.prefix_tokens,
        "model.adapter.kind none, lora or rank-lora (merged)": m.adapter.kind in ("none", "lora", "rank-lora"),
        "no fusion layers, classifier or extra heads":
            m.fusion.kind == "none" and not m.num_classes and not m.description_dim and not m.attribute_streams,
    }
    return [need for need, met in needs.items() if not met]
