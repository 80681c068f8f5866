"""Named presets as code: each recipe is a small function returning a ``RunConfig``.

``vlalign recipes`` lists them; ``vlalign train --recipe NAME --set key=value`` runs one with
overrides. Register a new one with ``@recipe``; its docstring's first line is its description.
"""

from __future__ import annotations

from typing import Callable

from vlalign.config import RunConfig, validate
from vlalign.errors import ConfigError

RECIPES: dict[str, Callable[[], RunConfig]] = {}
DEFAULT_RECIPE = "shapes-clip"

# Colour-shape combinations never shown in training: the compositional split (SyViC-style).
SHAPES_HOLDOUT = "green-triangle+blue-star+red-square+yellow-circle"


def recipe(fn: Callable[[], RunConfig]) -> Callable[[], RunConfig]:
    RECIPES[fn.__name__.replace("_", "-")] = fn
    return fn


def get_recipe(name: str) -> RunConfig:
    if name not in RECIPES:
        raise ConfigError(f"Unknown recipe '{name}'. Run `vlalign recipes` to list them: {', '.join(sorted(RECIPES))}.")
    cfg = RECIPES[name]()
    cfg.name = name
    return validate(cfg, f"recipe {name}")


def describe(name: str) -> str:
    return (RECIPES[name].__doc__ or "").strip().splitlines()[0]


@recipe
def shapes_clip() -> RunConfig:
    """Default: CLIP (InfoNCE) ViT-tiny + text-tiny on the shapes world, ~3 min on 2 CPU cores."""
    cfg = RunConfig()
    cfg.data.train = f"shapes:n=30000,seed=0,holdout={SHAPES_HOLDOUT}"
    cfg.data.eval = "shapes:n=1000,seed=1"
    return cfg


@recipe
def shapes_siglip() -> RunConfig:
    """The default recipe with SigLIP's pairwise sigmoid loss instead of softmax InfoNCE."""
    cfg = shapes_clip()
    cfg.objective.name = "siglip"
    return cfg


@recipe
def shapes_fdt() -> RunConfig:
    """The default recipe with an FDT head: both towers grounded in a shared 1024-code codebook (sparsemax)."""
    cfg = shapes_clip()
    cfg.model.head = "fdt"
    cfg.objective.name = "fdt"
    return cfg


@recipe
def tiny() -> RunConfig:
    """Smoke test: micro towers, 20 steps on 512 shapes; seconds on a CPU."""
    cfg = RunConfig()
    cfg.data.train = f"shapes:n=512,seed=0,holdout={SHAPES_HOLDOUT}"
    cfg.data.eval = "shapes:n=64,seed=1"
    cfg.data.image_size = 32
    cfg.data.batch_size = 32
    cfg.model.vision.size = "vit-micro"
    cfg.model.text.size = "text-micro"
    cfg.model.text.vocab_size = 300
    cfg.model.embed_dim = 32
    cfg.train.steps = 20
    cfg.train.log_every = 5
    cfg.train.checkpoint_every = 10
    cfg.optim.warmup_steps = 5
    cfg.eval.zeroshot_n = 64
    cfg.eval.retrieval_n = 64
    return cfg


@recipe
def shapes_locked_text() -> RunConfig:
    """LiT: a locked pretrained text tower (all-MiniLM-L6-v2, offline); only the image side trains."""
    cfg = shapes_clip()
    cfg.model.text.tower = "hf:all-MiniLM-L6-v2"
    cfg.model.text.pool = "mean"
    cfg.model.text.locked = True
    return cfg
