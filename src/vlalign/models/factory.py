"""Build a model from its config: resolve sizes -> build towers -> attach heads."""

from __future__ import annotations

from torch import nn

from vlalign.config import ModelConfig
from vlalign.models.channel_sampling import HierarchicalChannelSampling
from vlalign.models.channel_vit import ChannelPatchEmbed
from vlalign.models.classifier import LinearClassifier
from vlalign.models.dual_encoder import DualEncoder, PooledProjection
from vlalign.models.registry import text_size, vision_size
from vlalign.models.text import TextTransformer
from vlalign.models.vit import PatchEmbed, VisionTransformer

PATCH_EMBEDS = {"standard": PatchEmbed, "channel": ChannelPatchEmbed}


def build_patch_embed(cfg: ModelConfig, image_size: int, width: int) -> nn.Module:
    v = cfg.vision
    return PATCH_EMBEDS[v.patch_embed](image_size, v.patch_size, v.in_channels, width)


def build_channel_sampler(cfg: ModelConfig) -> nn.Module | None:
    if cfg.vision.channel_sampling == "hcs":
        return HierarchicalChannelSampling(cfg.vision.channel_sampling_per)
    return None


def build_vision(cfg: ModelConfig, image_size: int) -> VisionTransformer:
    size = vision_size(cfg.vision.size)
    patch_embed = build_patch_embed(cfg, image_size, size.width)
    return VisionTransformer(patch_embed, size.width, size.depth, size.heads, size.mlp_ratio, cfg.vision.pool,
                             build_channel_sampler(cfg))


def build_text(cfg: ModelConfig, vocab_size: int, context_length: int) -> TextTransformer:
    size = text_size(cfg.text.size)
    return TextTransformer(vocab_size, context_length, size.width, size.depth, size.heads, size.mlp_ratio,
                           cfg.text.pool)


def build_model(cfg: ModelConfig, image_size: int, vocab_size: int, context_length: int) -> DualEncoder:
    vision = build_vision(cfg, image_size)
    text = build_text(cfg, vocab_size, context_length)
    classifier = LinearClassifier(vision.width, cfg.num_classes) if cfg.num_classes > 0 else None
    return DualEncoder(vision, text, PooledProjection(vision.width, cfg.embed_dim),
                       PooledProjection(text.width, cfg.embed_dim), cfg.init_temperature, classifier)
