"""Tower sizes from one table, decoded by name (big_vision-style ``decode_variant``).

ViT rows follow Dosovitskiy et al. 2021 (Table 1) and DeiT (tiny); the micro rows exist so a
whole run fits in seconds on a laptop CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlalign.errors import ConfigError


@dataclass(frozen=True)
class TowerSize:
    width: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0


VISION_SIZES: dict[str, TowerSize] = {
    "vit-micro": TowerSize(64, 2, 2),
    "vit-tiny": TowerSize(128, 4, 4),
    "vit-small-cpu": TowerSize(256, 6, 4),  # PERF.md config "A" vision tower
    "vit-ti": TowerSize(192, 12, 3),  # DeiT-Ti
    "vit-s": TowerSize(384, 12, 6),
    "vit-b": TowerSize(768, 12, 12),
    "vit-l": TowerSize(1024, 24, 16),
}

TEXT_SIZES: dict[str, TowerSize] = {
    "text-micro": TowerSize(64, 2, 2),
    "text-tiny": TowerSize(128, 3, 4),
    "text-small-cpu": TowerSize(256, 4, 4),  # PERF.md config "A" text tower
    "text-b": TowerSize(512, 12, 8),  # CLIP ViT-B/* text tower
}


# Causal language models of the generative (LLaVA / CG-VLM) pipeline; nanoGPT-style widths.
DECODER_SIZES: dict[str, TowerSize] = {
    "lm-micro": TowerSize(64, 2, 2),
    "lm-mini": TowerSize(128, 3, 4),
    "lm-tiny": TowerSize(128, 4, 4),
    "lm-small-cpu": TowerSize(256, 6, 4),
}


def vision_size(name: str) -> TowerSize:
    return _lookup(VISION_SIZES, name, "model.vision.size")


def text_size(name: str) -> TowerSize:
    return _lookup(TEXT_SIZES, name, "model.text.size")


def decoder_size(name: str) -> TowerSize:
    return _lookup(DECODER_SIZES, name, "model.vlm.decoder")


def _lookup(table: dict[str, TowerSize], name: str, key: str) -> TowerSize:
    if name not in table:
        raise ConfigError(f"Unknown {key} '{name}'. Known sizes: {', '.join(table)}.")
    return table[name]
