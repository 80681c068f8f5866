"""Build a model from its config: resolve sizes -> build towers -> attach heads."""

from __future__ import annotations

from torch import nn

from vlalign.config import ModelConfig
from vlalign.errors import ConfigError
from vlalign.models.adapters import apply_adapter
from vlalign.models.cross_modal import CrossModal, MaskedTokenHead, MatchingHead
from vlalign.models.decoder import CausalDecoder, DecoderConfig
from vlalign.models.depth_breadth import DepthBreadthFeatures
from vlalign.models.dual_encoder import DualEncoder, FDTHead, PooledProjection, TokenProjection
from vlalign.models.fdt import FDTCodebook, FDTGrounding
from vlalign.models.fusion import FiberFusion
from vlalign.models.hf_text import HFTextTower, is_hf_tower, resolve_hf_path
from vlalign.models.manager import ManagerFusion
from vlalign.models.channel_sampling import HierarchicalChannelSampling
from vlalign.models.channel_vit import ChannelPatchEmbed
from vlalign.models.classifier import LinearClassifier
from vlalign.models.prefix import DatasetPrefix
from vlalign.models.registry import decoder_size, text_size, vision_size
from vlalign.models.text import TextTransformer
from vlalign.models.text_committee import TextCommittee
from vlalign.models.text_mlm import MaskedTextModel
from vlalign.models.conv_stem import ConvStemEmbed
from vlalign.models.token_merging import TokenMerging, merge_schedule
from vlalign.models.video import (AttentionPool, FrameSampler, MaskedVideoModelling, MeanPool, SlowFastRouter,
                                  VideoTransformer)
from vlalign.models.vit import PatchEmbed, VisionTransformer
from vlalign.models.visual_experts import add_visual_experts
from vlalign.models.vq import PatchVQTokenizer
from vlalign.models.vlm import CONNECTORS, VisionLanguageModel

PATCH_EMBEDS = {"standard": PatchEmbed, "channel": ChannelPatchEmbed, "conv": ConvStemEmbed}


def build_patch_embed(cfg: ModelConfig, image_size: int, width: int) -> nn.Module:
    v = cfg.vision
    bias = {} if v.patch_bias else {"bias": False}  # validated: only the standard embedding is bias-free
    return PATCH_EMBEDS[v.patch_embed](image_size, v.patch_size, v.in_channels, width, **bias)


def build_channel_sampler(cfg: ModelConfig) -> nn.Module | None:
    if cfg.vision.channel_sampling == "hcs":
        return HierarchicalChannelSampling(cfg.vision.channel_sampling_per)
    return None


def build_token_merging(cfg: ModelConfig, image_size: int, depth: int) -> TokenMerging | None:
    """ToMe merging (``model.vision.merge_r`` / ``merge_schedule``); None when no block merges."""
    try:
        counts = merge_schedule(cfg.vision.merge_r, cfg.vision.merge_schedule, depth,
                                1 + num_image_tokens(cfg, image_size))
    except ValueError as err:
        raise ConfigError(f"Token merging: {err}.") from None
    return TokenMerging(counts) if any(counts) else None


def build_vision(cfg: ModelConfig, image_size: int) -> VisionTransformer:
    size = vision_size(cfg.vision.size)
    patch_embed = build_patch_embed(cfg, image_size, size.width)
    args = (patch_embed, size.width, size.depth, size.heads, size.mlp_ratio, cfg.vision.pool,
            build_channel_sampler(cfg), build_token_merging(cfg, image_size, size.depth))
    clip = {"ln_pre": cfg.vision.ln_pre, "activation": cfg.vision.activation}
    if cfg.video.frames:
        return VideoTransformer(*args, **clip, **build_video_stages(cfg, size.width, size.heads))
    return VisionTransformer(*args, **clip)


def build_video_stages(cfg: ModelConfig, width: int, heads: int) -> dict:
    """``model.video``: the stages a clip passes through around the ViT (``vlalign.models.video``)."""
    v = cfg.video
    pool_grid = tuple(v.pool_grid) if v.tokens == "pllava" else None
    num_tokens = pool_grid[0] * pool_grid[1] * pool_grid[2] if pool_grid else v.frames
    router = (SlowFastRouter(cfg.vision.patch_size, v.similarity_threshold, v.change_tolerance, v.fast_scale)
              if v.slow_fast else None)
    mvm = None
    if v.mvm_codes:
        tokenizer = PatchVQTokenizer(cfg.vision.patch_size, cfg.vision.in_channels, v.mvm_codes)
        mvm = MaskedVideoModelling(tokenizer, width, v.mvm_mask_ratio)
    pool = AttentionPool(width, heads, num_tokens) if v.pool == "attention" else MeanPool()
    return {"sampler": FrameSampler(v.frames, v.sampling), "temporal_pool": pool, "pool_grid": pool_grid,
            "router": router, "mvm": mvm}


def build_text(cfg: ModelConfig, vocab_size: int, context_length: int) -> nn.Module:
    if is_hf_tower(cfg.text.tower):
        return HFTextTower(resolve_hf_path(cfg.text.tower), cfg.text.locked)
    size = text_size(cfg.text.size)
    # Positions for the dataset-type prefix too (Prefix Conditioning), ahead of the text's own.
    members = [TextTransformer(vocab_size, context_length + cfg.text.prefix_tokens, size.width,
                               cfg.text.depth or size.depth, size.heads, size.mlp_ratio, cfg.text.pool,
                               cfg.text.activation)
               for _ in range(cfg.text.committee)]
    return members[0] if cfg.text.committee == 1 else TextCommittee(members)


def num_image_tokens(cfg: ModelConfig, image_size: int) -> int:
    """Patch tokens the ViT gives at most: N spatial patches, times C channels for ChannelViT (METHODS.md §1.1)."""
    patches = (image_size // cfg.vision.patch_size) ** 2
    return patches * cfg.vision.in_channels if cfg.vision.patch_embed == "channel" else patches


def build_vlm(cfg: ModelConfig, image_size: int, vocab_size: int, context_length: int) -> VisionLanguageModel:
    """arch "vlm": ViT -> connector -> causal LM; arch "lm": the causal LM alone (same positions)."""
    prefix = num_image_tokens(cfg, image_size)
    size = decoder_size(cfg.vlm.decoder)
    decoder = CausalDecoder(DecoderConfig(vocab_size=vocab_size, context_length=prefix + context_length,
                                          width=size.width, depth=size.depth, heads=size.heads,
                                          mlp_ratio=size.mlp_ratio, positions=cfg.vlm.positions))
    if cfg.arch == "lm":
        return VisionLanguageModel(decoder, prefix)
    if cfg.vlm.visual_experts:  # Mono-InternVL (issue 13)
        add_visual_experts(decoder)
    vision = build_vision(cfg, image_size)
    hidden = {"hidden": cfg.vlm.connector_width} if cfg.vlm.connector == "mlp" else {}
    features = None
    if cfg.vlm.feature_depths or cfg.vlm.feature_views:  # Florence-VL depth-breadth fusion
        features = DepthBreadthFeatures(cfg.vlm.feature_depths or [-1], cfg.vlm.feature_views or ["identity"])
    width = vision.width * (features.multiplier() if features is not None else 1)
    connector = CONNECTORS[cfg.vlm.connector](width, size.width, **hidden)
    return VisionLanguageModel(decoder, prefix, vision, connector, cfg.init_temperature, features)


def build_heads(cfg: ModelConfig, vision_width: int, text_width: int) -> tuple[nn.Module, nn.Module]:
    """(image head, text head): CLIP projections, or FDT groundings sharing one codebook."""
    if cfg.head == "fdt":
        f = cfg.fdt
        codebook = FDTCodebook(f.num_codes, f.code_dim)
        options = dict(pool=f.pool, activation=f.activation, temperature=f.temperature, pad_mode=f.pad_mode)
        return (FDTHead(FDTGrounding(vision_width, codebook, **options)),
                FDTHead(FDTGrounding(text_width, codebook, **options)))
    if cfg.head == "tokens":
        return TokenProjection(vision_width, cfg.embed_dim), TokenProjection(text_width, cfg.embed_dim)
    return PooledProjection(vision_width, cfg.embed_dim), PooledProjection(text_width, cfg.embed_dim)


def build_cross_modal(cfg: ModelConfig, vocab_size: int) -> CrossModal | None:
    """``model.fusion``: FIBER's gated fusion in the towers or ManagerTower's layers, with the ITM (and MLM) heads."""
    f = cfg.fusion
    if f.kind == "none":
        return None
    v, t = vision_size(cfg.vision.size), text_size(cfg.text.size)
    if f.kind == "fiber":
        fusion = FiberFusion(v.width, v.heads, t.width, t.heads, f.num_layers, f.gate_init)
        image_width, text_width = v.width, t.width
    else:  # ManagerTower's cross-modal layers run at the text tower's width and heads
        fusion = ManagerFusion(v.width, t.width, t.width, t.heads, f.num_layers, f.num_managed_layers or v.depth,
                               f.num_managed_layers or t.depth)
        image_width = text_width = t.width
    mlm_head = MaskedTokenHead(text_width, vocab_size) if f.mlm_probability > 0 else None
    return CrossModal(fusion, MatchingHead(image_width, text_width), mlm_head, f.mlm_probability, f.itm_negatives,
                      vocab_size)


def build_image_heads(cfg: ModelConfig, vision_width: int) -> nn.ModuleDict | None:
    """Further heads on the pooled image feature: GPT4Image's projection into a frozen text encoder's space
    ("description"), one projection per MeDSLIP attribute stream ("stream_<attribute>")."""
    heads = {}
    if cfg.description_dim:
        heads["description"] = PooledProjection(vision_width, cfg.description_dim)
    for stream in cfg.attribute_streams:
        heads[f"stream_{stream}"] = PooledProjection(vision_width, cfg.embed_dim)
    return nn.ModuleDict(heads) if heads else None


def build_model(cfg: ModelConfig, image_size: int, vocab_size: int,
                context_length: int) -> DualEncoder | VisionLanguageModel:
    if cfg.arch in ("lm", "vlm"):
        return build_vlm(cfg, image_size, vocab_size, context_length)
    if cfg.arch == "text-mlm":  # the text tower alone, masked-LM pre-training (vlalign.models.text_mlm)
        return MaskedTextModel(build_text(cfg, vocab_size, context_length), vocab_size)
    vision = build_vision(cfg, image_size)
    text = build_text(cfg, vocab_size, context_length)
    image_head, text_head = build_heads(cfg, vision.width, text.width)
    classifier = LinearClassifier(vision.width, cfg.num_classes) if cfg.num_classes > 0 else None
    prefix = DatasetPrefix(cfg.text.prefix_tokens, text.width) if cfg.text.prefix_tokens else None
    model = DualEncoder(vision, text, image_head, text_head, cfg.init_temperature, classifier, prefix,
                        build_cross_modal(cfg, vocab_size), build_image_heads(cfg, vision.width))
    if cfg.text.locked:
        text.requires_grad_(False)
    if cfg.text.lock_projection:  # LanguageBind: the whole text space is fixed, the new modality moves into it
        text_head.requires_grad_(False)
    if cfg.vision.locked:  # LiT's locked image tower; its head still trains (FILIP needs it for tokens)
        vision.requires_grad_(False)
    return apply_adapter(model, cfg.adapter)
