"""Named presets as code: each recipe is a small function returning a ``RunConfig``.

``vlalign recipes`` lists them; ``vlalign train --recipe NAME --set key=value`` runs one with
overrides. Register a new one with ``@recipe``; its docstring's first line is its description.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from vlalign.config import RunConfig, apply_overrides, merge_dict, read_yaml, validate
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
    """The first paragraph of the recipe's docstring, as one line."""
    return " ".join((RECIPES[name].__doc__ or "").strip().split("\n\n")[0].split())


def resolve_config(recipe: str | None = None, config: str | Path | None = None,
                   overrides: Sequence[str] = ()) -> RunConfig:
    """A run's config: the recipe (``recipe``, else the one the YAML file names with ``recipe: NAME``, else
    the default), the YAML file ``config`` on top, then the ``key=value`` overrides."""
    data = read_yaml(config) if config else {}
    named = data.pop("recipe", None)
    if recipe and named and named != recipe:
        raise ConfigError(f"--recipe {recipe} and {config}'s 'recipe: {named}' disagree; keep one of them.")
    cfg = get_recipe(recipe or named or DEFAULT_RECIPE)
    if data:
        cfg = merge_dict(cfg, data, str(config))
    return apply_overrides(cfg, list(overrides))


def check_stages(cfg: RunConfig) -> None:
    """Runs this config starts from that a recipe makes at its default place (``runs/NAME``) must exist;
    if one does not, say which recipe to train first."""
    for key, path in stage_paths(cfg):
        name = Path(path).name
        if Path(path) == Path("runs") / name and name in RECIPES and not Path(path).exists():
            raise ConfigError(f"{key} names {path}, which does not exist yet: train it first with "
                              f"`vlalign train --recipe {name}` (or point {key} at another run).")


def stage_paths(cfg: RunConfig) -> list[tuple[str, str]]:
    """(config key, run directory) of every earlier run ``cfg`` reads."""
    pairs = [("model.init_from", path) for path in cfg.model.init_from]
    pairs += [(key, path) for key, path in (("model.vlm.inherit_vpg", cfg.model.vlm.inherit_vpg),
                                             ("model.text.tokenizer_from", cfg.model.text.tokenizer_from)) if path]
    return pairs


@recipe
def shapes_clip() -> RunConfig:
    """Default: CLIP (InfoNCE) ViT-tiny/32 at 96 px + text-tiny on the shapes world, 800 steps (~4 min on 2 CPU cores)."""
    cfg = RunConfig()
    # Training and held-out scenes render natively at 96 px, as the zero-shot scenes do. Scenes drawn at
    # 64 px and upsampled arrive blurred, and small objects (13 px at 96) lost most of their outline:
    # small-object shape was 0.24-0.49 over four seeds of that setting against 0.85 on seed 1 of this one
    # (single runs while tuning; the recipe's own seeds are in benchmarks/results/default_recipe.md).
    cfg.data.train = f"shapes:n=30000,seed=0,size=96,holdout={SHAPES_HOLDOUT}"
    cfg.data.eval = "shapes:n=1000,seed=1,size=96"
    # One patch per cell of the world's 3x3 grid: each object is one token whose pixels sit at the same
    # place in it up to the jitter, so a linear patch projection can read its outline, with 10 image tokens
    # instead of 65 at 64 px / 8 px patches (objects split over 1-4 patches at any offset).
    cfg.data.image_size = 96
    cfg.model.vision.patch_size = 32
    # lr 1e-3 with beta2 0.95 (steadier second moments for short runs). A 250-step warm-up, not 100: with
    # 100 steps one seed in three diverged in the warm-up (gradient norms 60-110, loss back up to 5.1 at step
    # 110, ending at shape+colour 0.66); with 250 the same seed ended at 0.90. 800 steps (not 600) give the
    # longer warm-up its room and still fit 5 minutes.
    cfg.optim.lr = 1e-3
    cfg.optim.warmup_steps = 250
    cfg.optim.beta2 = 0.95
    cfg.train.steps = 800
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


# Real-data benchmarks (shared/DATA.md): contrastive training from scratch in a few CPU minutes. One
# thread: on these small towers two threads were 3-5x slower per step than one while other jobs
# shared the two cores (measured).


@recipe
def fashion_mnist_clip() -> RunConfig:
    """CLIP on Fashion-MNIST with templated captions ("a photo of the sneaker"), 500 steps; zero-shot + linear probe."""
    cfg = RunConfig()
    cfg.data.train, cfg.data.eval = "fashion-mnist:train", "fashion-mnist:test"
    cfg.data.image_size = 28  # native size
    cfg.data.context_length = 16  # the longest template is 9 words
    # 7 px patches, a 4x4 grid: measured at 600 steps, zero-shot top-1 0.84 in ~5 min with vit-tiny/7,
    # 0.78 in ~3.5 min with vit-micro/4; vit-tiny/4 was 2.6x slower per step than vit-tiny/7.
    cfg.model.vision.patch_size = 7
    cfg.model.vision.in_channels = 1
    cfg.model.text.size = "text-micro"  # 80 distinct captions: the text tower has little to learn
    cfg.model.text.vocab_size = 300
    cfg.model.embed_dim = 64
    cfg.optim.warmup_steps = 30
    cfg.optim.beta2 = 0.95
    cfg.train.steps = 500
    cfg.train.threads = 1
    cfg.train.checkpoint_every = 250
    cfg.eval.tasks = ["zeroshot", "linear-probe"]
    cfg.eval.zeroshot_n = 10_000  # the whole test split
    return cfg


@recipe
def openmoji_clip() -> RunConfig:
    """CLIP on OpenMoji emoji and their Unicode names, 300 steps; retrieval R@1/5/10 on the held-out 20% of names."""
    cfg = RunConfig()
    cfg.data.train, cfg.data.eval = "openmoji:train", "openmoji:test"
    cfg.data.image_size = 32
    cfg.data.context_length = 16  # the longest name has 9 words
    cfg.model.vision.patch_size = 8  # a 4x4 grid; 4 px patches (8x8) cost 2.8x more per step
    cfg.model.text.vocab_size = 1024
    cfg.model.embed_dim = 64
    cfg.optim.warmup_steps = 30
    cfg.optim.beta2 = 0.95
    # About 1.2k training pairs: 300 steps of 128 are ~33 passes. Held-out R@10 was the same after
    # 200 and 400 steps (the training loss fell from 1.3 to 0.4: the extra steps memorise).
    cfg.train.steps = 300
    cfg.train.threads = 1
    cfg.train.checkpoint_every = 150
    cfg.eval.tasks = ["retrieval"]
    cfg.eval.retrieval_n = 10_000  # every held-out pair
    return cfg


# ChannelViT (Bao et al. 2023, arXiv 2309.16108): supervised, as the paper; `--set objective.name=clip` (with the
# default eval tasks) trains the same towers contrastively. `vlalign eval --task channels` scores every subset.
STAINS = "objects=1,channels=stains,size=48"


def _channel_recipe(train: str, test: str, image_size: int, patch_size: int, in_channels: int, num_classes: int,
                    patch_embed: str, steps: int) -> RunConfig:
    cfg = RunConfig()
    cfg.data.train, cfg.data.eval = train, test
    cfg.data.image_size = image_size
    cfg.data.batch_size = 64
    cfg.data.context_length = 16
    cfg.model.vision.size = "vit-micro"
    cfg.model.vision.patch_size = patch_size
    cfg.model.vision.in_channels = in_channels
    cfg.model.vision.patch_embed = patch_embed
    cfg.model.vision.channel_sampling = "hcs"
    cfg.model.text.size = "text-micro"
    cfg.model.text.vocab_size = 300
    cfg.model.embed_dim = 64
    cfg.model.num_classes = num_classes
    cfg.objective.name = "supervised"
    cfg.optim.lr = 1e-3
    cfg.optim.weight_decay = 0.05
    cfg.optim.warmup_steps = 30
    cfg.train.steps = steps
    cfg.train.threads = 1  # tiny towers: one thread is faster than two fighting over small GEMMs
    cfg.train.log_every = 20
    cfg.train.checkpoint_every = steps
    cfg.eval.tasks = ["channels"]
    cfg.eval.zeroshot_n = 500
    return cfg


def _stains(patch_embed: str) -> RunConfig:
    # 48 px with 16 px patches: one patch per cell of the 3x3 scene grid, 9 patches per channel. The
    # stains are mostly dark: per-channel standardisation is what lets the small towers learn at all.
    cfg = _channel_recipe(f"shapes:n=6000,seed=0,{STAINS}", f"shapes:n=500,seed=1,{STAINS}", 48, 16, 5, 56,
                          patch_embed, steps=500)
    cfg.data.normalization = "per_channel"
    return cfg


def _sentinel2(patch_embed: str) -> RunConfig:
    # 16x16 px (160 m) patches, 13 bands, 8 land-use classes; 8 px patches: 4 per band, 52 ChannelViT tokens.
    return _channel_recipe("sentinel2:train", "sentinel2:test", 16, 8, 13, 8, patch_embed, steps=400)


@recipe
def shapes_channelvit() -> RunConfig:
    """ChannelViT + HCS, supervised, on 5-channel "stains" shapes (one token per channel and patch); minutes on CPU."""
    return _stains("channel")


@recipe
def shapes_stains_vit() -> RunConfig:
    """The plain-ViT counterpart of shapes-channelvit: all 5 stains in one token per patch, HCS by zero-fill."""
    return _stains("standard")


@recipe
def sentinel2_channelvit() -> RunConfig:
    """ChannelViT + HCS, supervised land-use classification on 13-band Sentinel-2 patches; minutes on CPU."""
    return _sentinel2("channel")


@recipe
def sentinel2_vit() -> RunConfig:
    """The plain-ViT counterpart of sentinel2-channelvit: all 13 bands in one token per patch, HCS by zero-fill."""
    return _sentinel2("standard")


# ---------------------------------------------------------------------------------------------
# CG-VLM / LLaVA stages (METHODS.md §3.4). Each recipe reads the previous stage's run directory
# (model.init_from), under runs/ by default:
#   cgvlm-vision, lm-pretrain -> cgvlm-stage1-gen | cgvlm-stage1-cg -> cgvlm-stage2
# Every stage shares the image size, patch size, vision and decoder sizes and the text context, so
# the weights carry over; the tokenizer is the language model's. Distinct seeds keep the data of
# each stage apart, and the eval scenes (seed 1) apart from all of them.

CGVLM_EVAL = "shapes-qa:n=100,seed=1"


def _generative_base() -> RunConfig:
    cfg = RunConfig()
    cfg.data.eval = CGVLM_EVAL
    cfg.data.image_size = 32
    cfg.data.batch_size = 32
    cfg.data.context_length = 48  # caption, question and answer as one text fit with room to spare
    cfg.model.arch = "vlm"
    cfg.model.vision.size = "vit-micro"
    cfg.model.text.vocab_size = 512  # the shapes corpus has fewer words than that: BPE stops early
    cfg.model.vlm.decoder = "lm-micro"
    cfg.objective.name = "generative"
    cfg.optim.warmup_steps = 30
    cfg.optim.weight_decay = 0.0
    cfg.train.steps = 300
    cfg.train.log_every = 25
    cfg.train.checkpoint_every = 100
    cfg.eval.vqa_n = 1000
    cfg.eval.caption_n = 100
    return cfg


def _micro_clip(train: str, eval_spec: str) -> RunConfig:
    """CLIP with the micro towers at 32 px, batch 64: the small dual encoder of the CG-VLM vision stage and
    of the continual task stream."""
    cfg = RunConfig()
    cfg.data.train, cfg.data.eval = train, eval_spec
    cfg.data.image_size = 32
    cfg.data.batch_size = 64
    cfg.model.vision.size = "vit-micro"
    cfg.model.text.size = "text-micro"
    cfg.model.text.vocab_size = 300
    cfg.model.embed_dim = 64
    cfg.optim.warmup_steps = 30
    return cfg


@recipe
def cgvlm_vision() -> RunConfig:
    """CG-VLM stage 0b: CLIP on shapes, training the ViT the generative stages reuse (~3 min)."""
    cfg = _micro_clip("shapes:n=8000,seed=4", "shapes:n=500,seed=1")
    cfg.train.steps = 600
    cfg.train.checkpoint_every = 200
    cfg.eval.tasks = ["zeroshot", "retrieval"]
    cfg.eval.zeroshot_n = 500
    cfg.eval.retrieval_n = 500
    return cfg


@recipe
def lm_pretrain() -> RunConfig:
    """CG-VLM stage 0a: a tiny causal LM pre-trained on text only (captions, questions, answers)."""
    cfg = _generative_base()
    cfg.data.train = "shapes-qa:n=3000,seed=3"
    cfg.model.arch = "lm"
    cfg.model.vlm.freeze = []
    cfg.optim.lr = 2e-3
    cfg.train.steps = 400
    cfg.eval.tasks = ["text-qa"]
    return cfg


@recipe
def cgvlm_stage1_gen() -> RunConfig:
    """Stage 1 (LLaVA): align the connector with captioning only; ViT and LM frozen."""
    cfg = _generative_base()
    cfg.data.train = "shapes:n=6000,seed=0"
    cfg.model.init_from = ["runs/lm-pretrain", "runs/cgvlm-vision"]
    cfg.optim.lr = 2e-3  # LLaVA's stage-1 rate: only the connector learns
    cfg.eval.tasks = ["caption", "alignment"]
    return cfg


@recipe
def cgvlm_stage1_cg() -> RunConfig:
    """Stage 1 (CG-VLM): captioning + patch-token contrastive loss (λ=1); ViT and LM frozen."""
    cfg = cgvlm_stage1_gen()
    cfg.objective.name = "cgvlm"
    return cfg


@recipe
def cgvlm_stage2() -> RunConfig:
    """Stage 2: instruction tuning on shapes QA (connector + LM); subsample with data.fraction."""
    cfg = _generative_base()
    cfg.data.train = "shapes-qa:n=2000,seed=2"
    cfg.model.init_from = ["runs/cgvlm-stage1-cg"]
    cfg.model.vlm.freeze = ["vision"]
    cfg.optim.lr = 1e-3
    cfg.eval.tasks = ["vqa", "text-qa"]
    return cfg


# ---------------------------------------------------------------------------------------------
# Objectives beside CLIP: FILIP/Wukong, Prefix Conditioning, PTP. Each is the default recipe with one component.

# Image-label data for prefix conditioning: single-object scenes (the label names the whole image, as an
# ImageNet class does), read as "a red circle"; the compositional holdout stays out of it too.
SHAPES_LABELS = f"labels:shapes:n=15000,seed=5,objects=1,holdout={SHAPES_HOLDOUT}"


@recipe
def shapes_filip() -> RunConfig:
    """FILIP/Wukong: token-wise late-interaction similarity (mean over patches of the best token, and back)."""
    cfg = shapes_clip()
    cfg.model.head = "tokens"
    cfg.objective.name = "filip"
    return cfg


@recipe
def shapes_lit_filip() -> RunConfig:
    """LiT + FILIP (Wukong): the image tower of runs/shapes-clip, locked; text tower (from scratch) and heads train."""
    cfg = shapes_filip()
    cfg.model.vision.locked = True
    cfg.model.init_from = ["runs/shapes-clip"]
    cfg.model.init_modules = ["vision"]
    return cfg


@recipe
def shapes_prefix() -> RunConfig:
    """Prefix conditioning + UniCL on shapes captions and class-name labels; caption prefix at zero-shot."""
    cfg = shapes_clip()
    cfg.data.train = f"union:{cfg.data.train};{SHAPES_LABELS}"
    cfg.model.text.prefix_tokens = 1
    cfg.objective.name = "unicl"
    return cfg


@recipe
def shapes_ptp() -> RunConfig:
    """PTP: CLIP plus an InfoNCE term on position prompts "the block P has a O" from known object positions."""
    cfg = shapes_clip()
    cfg.objective.name = "ptp"
    cfg.eval.tasks = [*cfg.eval.tasks, "grounding"]
    return cfg


@recipe
def shapes_fiber() -> RunConfig:
    """FIBER: gated cross-attention in the top 2 blocks of both towers, ITC + ITM on mined hard negatives;
    retrieval-itm re-ranks the contrastive top-k with the matching head."""
    cfg = shapes_clip()
    cfg.model.fusion.kind = "fiber"
    cfg.model.fusion.num_layers = 2
    cfg.objective.name = "fusion"
    cfg.eval.tasks = [*cfg.eval.tasks, "retrieval-itm"]
    return cfg


@recipe
def shapes_uniter() -> RunConfig:
    """UNITER's objectives on FIBER's fusion: image-conditioned MLM, ITM and word-region alignment by OT (λ=0.1)."""
    cfg = shapes_fiber()
    cfg.model.fusion.mlm_probability = 0.15
    cfg.objective.wra_weight = 0.1
    return cfg


@recipe
def shapes_manager() -> RunConfig:
    """ManagerTower: 2 cross-modal layers whose managers mix every unimodal layer; ITC + ITM + MLM.
    `--set model.fusion.num_managed_layers=1` is the last-layer-only ablation."""
    cfg = shapes_clip()
    cfg.model.fusion.kind = "manager"
    cfg.model.fusion.num_layers = 2
    cfg.model.fusion.mlm_probability = 0.15
    cfg.objective.name = "fusion"
    cfg.eval.tasks = [*cfg.eval.tasks, "retrieval-itm"]
    return cfg


# ---------------------------------------------------------------------------------------------
# More objectives: GPT4Image, MeDSLIP, VELVET-Med, PS3, LanguageBind.


@recipe
def shapes_medslip() -> RunConfig:
    """MeDSLIP: CLIP + ProtoNCE on caption prototypes + shape and colour streams, each aligned with its attribute."""
    cfg = shapes_clip()
    cfg.objective.name = "medslip"
    cfg.model.attribute_streams = ["shape", "colour"]
    return cfg


@recipe
def shapes_velvet() -> RunConfig:
    """VELVET-Med: hierarchical contrast at caption, clause and word (token-patch) level."""
    cfg = shapes_clip()
    cfg.model.head = "tokens"
    cfg.objective.name = "velvet"
    return cfg


@recipe
def shapes_ps3() -> RunConfig:
    """PS3: global CLIP + region crops against region captions; `--task region-select` scores top-down selection."""
    cfg = shapes_clip()
    cfg.objective.name = "ps3"
    cfg.eval.tasks = [*cfg.eval.tasks, "region-select"]
    return cfg


@recipe
def shapes_bind_edges() -> RunConfig:
    """LanguageBind: edge maps into the locked text space of runs/shapes-clip, the image tower started from its own."""
    cfg = shapes_clip()
    cfg.data.train = f"edges:{cfg.data.train}"
    cfg.data.eval = f"edges:{cfg.data.eval}"
    # Every weight of the CLIP run (LanguageBind starts each modality encoder from the VL model's image encoder);
    # the grey edge map is expanded to the tower's 3 channels. The text tower and projection stay fixed.
    cfg.model.init_from = ["runs/shapes-clip"]
    cfg.model.text.locked = True
    cfg.model.text.lock_projection = True
    cfg.eval.tasks = ["zeroshot", "retrieval", "cross-modal"]
    return cfg


@recipe
def fashion_mnist_gpt4image() -> RunConfig:
    """GPT4Image: a supervised ViT on Fashion-MNIST aligned with all-MiniLM-L6-v2 embeddings of its captions."""
    cfg = RunConfig()
    cfg.data.train, cfg.data.eval = "fashion-mnist:train", "fashion-mnist:test"
    cfg.data.image_size = 28
    cfg.data.batch_size = 64
    cfg.model.vision.size = "vit-micro"
    cfg.model.vision.patch_size = 7
    cfg.model.vision.in_channels = 1
    cfg.model.text.size = "text-micro"
    cfg.model.text.vocab_size = 300
    cfg.model.num_classes = 10
    cfg.model.description_dim = 384
    cfg.objective.name = "gpt4image"
    cfg.optim.warmup_steps = 30
    cfg.train.steps = 500
    cfg.train.checkpoint_every = 500
    cfg.eval.tasks = ["channels"]
    return cfg


# ---------------------------------------------------------------------------------------------
# Continual pre-training (CTP), VPG transfer (VPGTrans), visual experts (Mono-InternVL).
# docs/continual.md walks through each; benchmarks/catalogue_continual.py measures them.


def _continual_task(domain: str) -> RunConfig:
    cfg = _micro_clip(f"shapes-domain:split=family,domain={domain},n=4000,seed=0,size=32",
                      f"shapes-domain:split=family,domain={domain},n=500,seed=1,size=32")
    cfg.train.steps = 300
    cfg.train.threads = 1
    cfg.train.checkpoint_every = 300
    cfg.eval.tasks = ["zeroshot"]
    cfg.eval.zeroshot_n = 500
    return cfg


@recipe
def continual_first() -> RunConfig:
    """Task 1 of the shape-family stream (round shapes), CLIP; the later tasks start from runs/continual-first."""
    return _continual_task("round")


@recipe
def continual_seqft() -> RunConfig:
    """Sequential fine-tuning: CLIP on the next domain (angular shapes) from runs/continual-first (the baseline)."""
    cfg = _continual_task("angular")
    cfg.model.init_from = ["runs/continual-first"]
    return cfg


@recipe
def continual_ctp() -> RunConfig:
    """CTP: the next domain with compatible momentum contrast + topology preservation against runs/continual-first."""
    cfg = continual_seqft()
    cfg.objective.name = "ctp"
    return cfg


def _vpg_stage(init_from: list[str]) -> RunConfig:
    cfg = cgvlm_stage1_gen()
    cfg.model.vlm.decoder = "lm-mini"
    cfg.model.vlm.connector_width = 64
    cfg.model.init_from = init_from
    cfg.eval.tasks = ["caption-tokens"]
    return cfg


@recipe
def vpg_small() -> RunConfig:
    """VPGTrans stage 0: the VPG to transfer, a stage-1 VLM on the small LM (runs/lm-pretrain) with a 64-wide
    connector; vpgtrans-warmup inherits it."""
    cfg = cgvlm_stage1_gen()
    cfg.model.vlm.connector_width = 64
    cfg.eval.tasks = ["caption-tokens"]
    return cfg


@recipe
def lm_pretrain_mini() -> RunConfig:
    """VPGTrans's larger LM: lm-pretrain with the lm-mini decoder and runs/lm-pretrain's tokenizer (the word
    converter pairs the two LMs' token embeddings)."""
    cfg = lm_pretrain()
    cfg.model.vlm.decoder = "lm-mini"
    cfg.model.text.tokenizer_from = "runs/lm-pretrain"
    return cfg


@recipe
def vpgtrans_warmup() -> RunConfig:
    """VPGTrans stage 1: inherit runs/vpg-small's VPG into runs/lm-pretrain-mini, word-converter projector,
    train only it at 5x lr."""
    cfg = _vpg_stage(["runs/lm-pretrain-mini"])
    cfg.model.vlm.inherit_vpg = "runs/vpg-small"
    cfg.model.vlm.projector_init = "word-converter"
    cfg.model.vlm.freeze = ["vision", "decoder", "connector.fc1"]
    cfg.optim.lr = 1e-2  # 5x the 2e-3 of stage 1 (VPGTrans §4.2: projector warm-up at 5x the learning rate)
    cfg.optim.warmup_steps = 5
    cfg.train.steps = 50
    return cfg


@recipe
def vpgtrans_tune() -> RunConfig:
    """VPGTrans stage 2: VPG (connector.fc1) and projector together at the normal rate, from runs/vpgtrans-warmup."""
    return _vpg_stage(["runs/vpgtrans-warmup"])


@recipe
def mono_visual_experts() -> RunConfig:
    """Mono-InternVL: visual FFN experts in the frozen LM (stage-1 captioning); text-only outputs stay the LM's."""
    cfg = cgvlm_stage1_gen()
    cfg.model.vlm.visual_experts = True
    cfg.eval.tasks = ["caption-tokens", "text-tokens"]
    return cfg


@recipe
def moving_shapes_video() -> RunConfig:
    """Video-text CLIP on moving-shapes clips: 4 of 8 frames per clip, order-aware attention pooling."""
    cfg = RunConfig()
    cfg.data.train = "moving-shapes:n=20000,seed=0"
    cfg.data.eval = "moving-shapes:n=500,seed=1"
    cfg.data.image_size = 32
    cfg.data.batch_size = 64
    cfg.model.vision.size, cfg.model.vision.patch_size = "vit-micro", 8
    # Mean-pooled frames: a CLS-pooled micro ViT sits on the initial loss plateau for a varying number of steps.
    cfg.model.vision.pool = "mean"
    cfg.model.text.size, cfg.model.text.vocab_size = "text-micro", 512
    cfg.model.embed_dim = 64
    cfg.model.video.frames = 4
    cfg.model.video.pool = "attention"
    cfg.optim.beta2 = 0.95
    cfg.eval.tasks = ["video-retrieval", "motion"]
    cfg.eval.retrieval_n = 500
    return cfg


# ---------------------------------------------------------------------------------------------
# Tiny language models (docs/efficiency.md): masked-LM pre-training of the text tower.


@recipe
def text_mlm() -> RunConfig:
    """The default recipe's text tower alone, masked LM on captions; start a CLIP run from it with
    model.init_from=[runs/text-mlm] and model.init_modules=[text] (same model.text.* and context length)."""
    cfg = RunConfig()
    cfg.data.train = "shapes:n=20000,seed=6"
    cfg.model.arch = "text-mlm"
    cfg.objective.name = "text-mlm"
    cfg.optim.lr = 1e-3
    cfg.train.steps = 300
    cfg.eval.tasks = []
    return cfg
