"""Tower sizes from one table, decoded by name (big_vision-style ``decode_variant``).

ViT rows follow Dosovitskiy et al. 2021 (Table 1) and DeiT (tiny); the micro rows exist so a
whole run fits in seconds on a laptop CPU. A size outside the tables is spelled out as
``w<width>-d<depth>-h<heads>-m<mlp hidden width>``, e.g. ``w768-d12-h12-m3072`` (ViT-B): the form a
converted checkpoint's towers take (``vlalign.pretrained``).
"""

from __future__ import annotations

import re
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


SPELLED = re.compile(r"w(\d+)-d(\d+)-h(\d+)-m(\d+)")


def spell_size(width: int, depth: int, heads: int, mlp: int, table: dict[str, TowerSize]) -> str:
    """The name of a tower of these dimensions: its row of ``table`` if it has one, else spelled out."""
    size = TowerSize(width, depth, heads, mlp / width)
    named = [name for name, row in table.items() if row == size]
    return named[0] if named else f"w{width}-d{depth}-h{heads}-m{mlp}"


def _lookup(table: dict[str, TowerSize], name: str, key: str) -> TowerSize:
    if name in table:
        return table[name]
    spelled = SPELLED.fullmatch(name)
    if spelled and min(int(v) for v in spelled.groups()) > 0:
        width, depth, heads, mlp = (int(v) for v in spelled.groups())
        return TowerSize(width, depth, heads, mlp / width)
    raise ConfigError(f"Unknown {key} '{name}'. Known sizes: {', '.join(table)}, or spelled out as "
                      "w<width>-d<depth>-h<heads>-m<mlp width>, e.g. w768-d12-h12-m3072.")
