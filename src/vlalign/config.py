"""Typed run configuration: nested dataclasses, YAML load/dump, ``--set key.path=value`` overrides.

Every field has a type, and every value is checked against it at load time: an unknown key, a
wrong type or a bad value is a ``ConfigError`` that names the key path and the file it came from
(with a suggestion for a likely typo). A recipe (``vlalign.recipes``) is a function returning a
``RunConfig``; YAML files and overrides are applied on top of it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlalign.data.negatives import NEGATIVE_KINDS
from vlalign.device import check_setting
from vlalign.errors import ConfigError


@dataclass(kw_only=True)
class DataConfig:
    train: str = "shapes:n=20000,seed=0"  # a data spec (see vlalign.data.specs; `vlalign data sources`)
    eval: str = "shapes:n=1000,seed=1"  # held-out pairs for retrieval
    image_size: int = 64
    batch_size: int = 128
    num_workers: int = 0
    context_length: int = 32  # text tokens, including BOS/EOS
    fraction: float = 1.0  # use this fraction of the training source (deterministic subset)
    max_skip_fraction: float = 0.01  # fail the run when more samples than this are corrupt
    cache_dir: str = ""  # if set: decode 8-bit images once at image_size into a memory-mapped cache here
    # "exact": order is a function of (seed, epoch, rank, position), resume continues with the next sample;
    # "resampled": random batches without epochs from one long-lived worker pool, resume starts a fresh stream
    # "sequential": positions in index order every epoch, for a source that orders itself (curriculum:...)
    order: str = "exact"
    # "auto": the source's per-channel statistics if it has them, else 8-bit images to [-1, 1];
    # "per_channel": mean/std of each channel measured on the first training images (multi-channel data)
    normalization: str = "auto"
    # Data efficiency (Open-Qwen2VL; see docs/efficiency.md):
    # > 0 (archs lm / vlm): pack each batch's examples into decoder rows of this many entries, with a
    # block-diagonal causal mask and positions restarting per example (vlalign.models.packing); 0 = padded rows
    pack_length: int = 0
    # image sizes for equal consecutive parts of training, low to high, e.g. [16, 24, 32] (the last one usually
    # data.image_size); position embeddings are resampled to each grid (vlalign.train.curriculum); [] = off
    resolution_schedule: list[int] = field(default_factory=list)
    # DeepSeek-VL text retention (arch vlm, objective generative; vlalign.data.text_mixture): this share of the
    # steps are text-only batches from the data spec text_mixture; text_heldout: a data spec whose texts give
    # metrics.jsonl's "text/heldout_loss" at every log step (and step 0)
    text_mixture: str = ""
    text_ratio: float = 0.0
    text_heldout: str = ""


@dataclass(kw_only=True)
class VisionConfig:
    size: str = "vit-tiny"  # a row of vlalign.models.registry.VISION_SIZES
    patch_size: int = 8
    in_channels: int = 3
    patch_embed: str = "standard"  # "standard" | "channel" (ChannelViT) | "conv" (convolutional stem)
    pool: str = "cls"  # "cls" | "mean"
    channel_sampling: str = "none"  # "none" | "hcs" (Hierarchical Channel Sampling, training only)
    channel_sampling_per: str = "batch"  # "batch" (the reference) | "sample"
    locked: bool = False  # freeze the image tower (LiT, Zhai et al. 2022; Wukong): start it from model.init_from
    # Token merging (ToMe / SimVLG): merge this many similar tokens in every block (0 = off) ...
    merge_r: int = 0
    merge_schedule: list[int] = field(default_factory=list)  # ... or these many in block l (one count per block)
    # CLIP's tower (what a converted CLIP checkpoint sets; vlalign.pretrained): a LayerNorm on the tokens before the
    # first block, a bias-free patch embedding (standard only), and the MLP non-linearity, "gelu" | "quick_gelu"
    ln_pre: bool = False
    patch_bias: bool = True
    activation: str = "gelu"


@dataclass(kw_only=True)
class TextConfig:
    size: str = "text-tiny"  # a row of vlalign.models.registry.TEXT_SIZES
    vocab_size: int = 1024  # BPE tokenizer trained on the training captions
    # a run directory whose tokenizer.json this run takes instead of training one (VPGTrans: the larger LM
    # shares the small one's vocabulary); "" = train one, or inherit it from model.init_from
    tokenizer_from: str = ""
    pool: str = "eot"  # "eot" (causal mask, last token, as CLIP) | "mean" (bidirectional, mean of tokens)
    tower: str = "vlalign"  # "vlalign" (trained from scratch) | "hf:PATH" (a local Hugging Face encoder)
    locked: bool = False  # freeze the text tower (LiT, Zhai et al. 2022): train the image side into its space
    # learnable dataset-type prefix tokens per text type, caption or label (Prefix Conditioning, Saito et al.
    # 2023); 0 = none. Zero-shot and retrieval use the caption prefix.
    prefix_tokens: int = 0
    # also freeze the text projection head, so the whole text embedding space stays fixed: a new modality is
    # bound into a CLIP run's text space (LanguageBind, Zhu et al. 2024); needs locked=true
    lock_projection: bool = False
    # Tiny LMs' soft committee (vlalign.models.text_committee): this many independent towers
    # whose outputs are averaged (1 = one tower); depth = blocks per tower (0 = model.text.size's own)
    committee: int = 1
    depth: int = 0
    activation: str = "gelu"  # the blocks' MLP non-linearity: "gelu" | "quick_gelu" (OpenAI CLIP's)


@dataclass(kw_only=True)
class AdapterConfig:
    kind: str = "none"  # "none" | "lora" (through peft) | "bottleneck" (see vlalign.models.adapters)
    towers: list[str] = field(default_factory=lambda: ["vision", "text"])  # adapted towers; their base is frozen
    rank: int = 8  # LoRA rank r, or the bottleneck width
    alpha: float = 16.0  # LoRA scale alpha (the update is scaled by alpha / r)
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.proj"])  # LoRA: module-name suffixes
    # Adapters (see docs/adaptation.md). bottleneck/mma: block i of both towers uses one adapter (VL-Adapter)
    share: bool = False
    gate: str = "none"  # VL-PET gate on each adapter's output: "none" | "module" | "head" | "element"
    sparsity: float = 0.0  # rank-lora: L1 weight on the per-rank importance (Dynamic Rank-Selective LoRA)
    # the adapted text tower's token embeddings train too: a task whose words the base never read needs them
    train_token_embeddings: bool = False


@dataclass(kw_only=True)
class FDTConfig:
    """Finite Discrete Tokens head (METHODS.md §2), used when ``model.head`` is "fdt"."""

    num_codes: int = 1024  # K; the paper uses 16384 at ViT-B scale
    code_dim: int = 128  # the FDT feature width (replaces model.embed_dim)
    pool: str = "max"  # over tokens: "max" (paper) | "mean" | "sum"
    activation: str = "sparsemax"  # "sparsemax" (paper) | "softmax"
    temperature: float = 30.0  # grounding-score temperature; 30 measured for small models (see models/fdt.py)
    pad_mode: str = "neg_inf"  # "neg_inf": padded text tokens are inert | "zero": the reference's multiplicative mask


@dataclass(kw_only=True)
class VLMConfig:
    """The generative side (archs "lm" and "vlm"): ViT -> connector -> causal LM (LLaVA; METHODS.md §3)."""

    decoder: str = "lm-mini"  # a row of vlalign.models.registry.DECODER_SIZES
    connector: str = "mlp"  # "linear" (LLaVA) | "mlp" (LLaVA-1.5: Linear-GELU-Linear)
    # The decoder's positions: "learned" absolute embeddings (GPT-2) | "rope" rotary (LLaMA; docs/cgvlm.md)
    positions: str = "learned"
    # Top-level modules whose weights stay fixed: "vision", "connector", "decoder".
    # The default is LLaVA stage 1 (alignment): only the connector trains.
    freeze: list[str] = field(default_factory=lambda: ["vision", "decoder"])
    # VPGTrans and Mono-InternVL (docs/continual.md). The mlp connector's hidden width (0 = the LM width):
    # a fixed width makes its first layer (with the ViT: the visual prompt generator, VPG) independent of the LM.
    connector_width: int = 0
    # VPGTrans: a vlm run (another, e.g. smaller, LM) whose VPG (vision.*, connector.fc1.*) this model inherits
    inherit_vpg: str = ""
    # VPGTrans: the new projector (connector.fc2) starts "random", or as the inherited projector followed by a
    # "word-converter" (a least-squares map from the old LM's token embeddings to the new one's)
    projector_init: str = "random"
    # Mono-InternVL: a trainable visual FFN expert beside every block's FFN; image positions use it, text
    # positions the original. "decoder" in freeze fixes the language weights only; "visual_experts" fixes them.
    visual_experts: bool = False
    # Florence-VL depth-breadth fusion (vlalign.models.depth_breadth): the connector reads the tokens of these
    # ViT blocks (-1 = last) for each of these views ("identity", "hflip", "vflip"), concatenated per patch.
    # Both [] = the last layer's tokens only (LLaVA); one list [] = its default ([-1] or [identity]).
    feature_depths: list[int] = field(default_factory=list)
    feature_views: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class FusionConfig:
    """Cross-modal fusion on the dual encoder (FIBER, UNITER, ManagerTower), trained by objective
    "fusion"; the contrastive embeddings stay unimodal (see vlalign.models.cross_modal)."""

    # "none" | "fiber" (gated cross-attention in the towers' top blocks) | "manager" (ManagerTower's
    # cross-modal layers over the towers, each fed by managers that mix several unimodal layers)
    kind: str = "none"
    num_layers: int = 1  # fiber: top blocks of each tower that cross-attend (below the tower depth); manager: layers
    num_managed_layers: int = 0  # manager: top unimodal layers each manager mixes; 0 = all, 1 = the last only
    gate_init: float = 0.0  # fiber: α at start of every gate tanh(α); 0 (FIBER) starts as the plain dual encoder
    itm_negatives: str = "hard"  # ITM negatives: "hard" (from the batch's contrastive softmax) | "random"
    mlm_probability: float = 0.0  # > 0: image-conditioned masked language modelling on this fraction of words


@dataclass(kw_only=True)
class VideoConfig:
    """Video-text alignment (vlalign.models.video): the vision tower reads clips [B, T, C, H, W]
    from a video source (e.g. moving-shapes:...) and pools its frames into one clip feature."""

    frames: int = 0  # frames per clip the tower encodes (0 = an image model)
    sampling: str = "uniform"  # "uniform" (segment centres) | "random" (a random frame per segment in training: TSN)
    tokens: str = "frame"  # "frame" (each frame's pooled feature) | "pllava" (adaptive average pool of patch tokens)
    pool_grid: list[int] = field(default_factory=lambda: [4, 2, 2])  # pllava: the (T', h', w') token grid
    pool: str = "mean"  # temporal pooling of the tokens: "mean" (order-free) | "attention" (learned positions)
    # Keye-VL 1.5 Slow-Fast: frames with <= similarity_threshold of their patches unchanged (mean |Δpixel| <=
    # change_tolerance, normalised units) since the last slow frame are slow (full resolution); the rest fast
    # (resolution / fast_scale)
    slow_fast: bool = False
    similarity_threshold: float = 0.95
    change_tolerance: float = 0.05
    fast_scale: int = 2
    # E-ViLM masked video modelling (objective "video-mvm"): codes of the VQ patch tokenizer (0 = off), the
    # fraction of patches masked, and the tokenizer's training steps on the training frames before the run
    mvm_codes: int = 0
    mvm_mask_ratio: float = 0.4
    vq_steps: int = 300


@dataclass(kw_only=True)
class ModelConfig:
    arch: str = "dual-encoder"  # "dual-encoder" (CLIP-style) | "lm" (text-only causal LM) | "vlm" (LLaVA-style)
    # | "text-mlm" (the text tower alone, masked LM)
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)
    head: str = "projection"  # "projection" (CLIP: linear map of the pooled feature) | "fdt"
    # | "tokens" (the projection of every token too: FILIP's late interaction)
    fdt: FDTConfig = field(default_factory=FDTConfig)
    embed_dim: int = 128
    init_temperature: float = 0.07  # CLIP: logit scale starts at 1/0.07
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    num_classes: int = 0  # > 0 adds a linear classifier on the pooled image feature (objective "supervised")
    # Run directories whose newest checkpoint initialises this model, in order: every weight whose
    # name and shape match is copied (e.g. a CLIP run's `vision.*`, a language model's `decoder.*`).
    init_from: list[str] = field(default_factory=list)
    init_modules: list[str] = field(default_factory=list)  # copy only these top-level modules (e.g. [vision]); [] = all
    fusion: FusionConfig = field(default_factory=FusionConfig)
    # > 0 adds a head mapping the pooled image feature to a frozen text encoder's space of this width, e.g. 384
    # for all-MiniLM-L6-v2 (objective "gpt4image")
    description_dim: int = 0
    # attribute streams (MeDSLIP, objective "medslip"): one projection head per attribute, each aligned with
    # that attribute's text, e.g. [shape, colour] (vlalign.data.views.ATTRIBUTES); [] = none
    attribute_streams: list[str] = field(default_factory=list)
    video: VideoConfig = field(default_factory=VideoConfig)  # clips instead of images when video.frames > 0


@dataclass(kw_only=True)
class DescriptionConfig:
    """GPT4Image (objective "gpt4image"): supervised cross-entropy plus alignment with cached text embeddings
    of each image's description (its caption), made once by a frozen text encoder."""

    weight: float = 1.0  # λ in L = L_ce + λ·L_align
    encoder: str = "hf:all-MiniLM-L6-v2"  # the frozen text encoder (a local Hugging Face model, never downloaded)


@dataclass(kw_only=True)
class MeDSLIPConfig:
    """MeDSLIP (objective "medslip"): CLIP plus ProtoNCE on k-means prototypes, attribute-stream alignment and
    the separation of the streams of one image."""

    proto_weight: float = 1.0
    num_prototypes: list[int] = field(default_factory=lambda: [8])  # k of each k-means clustering (ProtoNCE's M)
    # steps of CLIP alone before ProtoNCE joins: clusters of untrained embeddings are noise (PCL warms up with
    # InfoNCE only, 20 of 200 epochs)
    proto_warmup_steps: int = 100
    stream_weight: float = 1.0  # each stream against its attribute text
    separation_weight: float = 1.0  # squared cosine between the streams of one image


@dataclass(kw_only=True)
class HierarchyConfig:
    """VELVET-Med (objective "velvet"): contrast at caption, clause and word level."""

    clause_weight: float = 1.0
    word_weight: float = 1.0  # token–patch late interaction; needs model.head=tokens (0 = off)
    max_clauses: int = 4  # clause slots per caption; further clauses are dropped


@dataclass(kw_only=True)
class RegionConfig:
    """PS3 (objective "ps3"): a crop of one object's region against its region caption, plus the global CLIP."""

    region_weight: float = 1.0


@dataclass(kw_only=True)
class CTPConfig:
    """CTP continual pre-training (objective "ctp", Zhu et al. 2023): CLIP on the new task plus compatible
    momentum contrast and topology preservation against the previous task's run (``model.init_from``)."""

    momentum: float = 0.9  # m in θ_m <- m·θ_m + (1-m)/2·(θ + θ_ref); CTP's reference code uses 0.9
    temperature: float = 0.07  # fixed temperature of both terms (the reference code's)
    momentum_weight: float = 1.0
    topology_weight: float = 1.0


@dataclass(kw_only=True)
class SALTConfig:
    """SALT (objective "salt"): CLIP plus distillation of a small trained teacher's batch similarities, early only."""

    teacher: str = ""  # a trained dual-encoder run directory (its own tokenizer and preprocessing)
    kd_weight: float = 1.0  # w in L = L_clip + w·L_kd while distilling
    kd_steps: int = 100  # distil for the first this many optimizer steps, then CLIP alone
    temperature: float = 0.05  # of the teacher's similarity softmax (its soft labels)


@dataclass(kw_only=True)
class ObjectiveConfig:
    # "clip" (softmax InfoNCE) | "siglip" (pairwise sigmoid) | "fdt" (InfoNCE on FDT features)
    # | "supervised" (class labels) | "generative" (next-token loss on targets)
    # | "cgvlm" (generative + patch-token contrastive, METHODS.md §3.3)
    name: str = "clip"
    max_logit_scale: float = 100.0  # CLIP clamps exp(logit_scale) at 100
    contrastive_weight: float = 1.0  # cgvlm: λ in L = L_gen + λ·L_con (unknown in the paper; 0 = captioning only)
    pool: str = "mean"  # cgvlm: pooling of the projected patches, "mean" | "max"
    # cgvlm: the caption tokens L_con compares the image with: "all" (the paper) | "content" (no function words,
    # vlalign.data.generative.FUNCTION_WORDS)
    contrastive_words: str = "all"
    # generative/cgvlm: the share of the loss on answer tokens (text-only QA documents' answers, stage-2
    # answers), the rest on the other target tokens; 0 = every target token alike, 1 = answers only
    answer_share: float = 0.0
    # clip/siglip/fdt: word-swap hard-negative captions as extra text negatives (NegCLIP/SVLC), any of
    # "colour", "size", "shape", "relation" (vlalign.data.negatives); [] = none
    hard_negatives: list[str] = field(default_factory=list)
    # clip/fdt: a positive paraphrase of every caption as a second positive text of its image (SVLC;
    # vlalign.data.paraphrases), multi-positive InfoNCE; false = CLIP's one positive
    positive_paraphrases: bool = False
    # Also: "filip" (token-wise late interaction, needs model.head=tokens) | "unicl" (label-aware InfoNCE:
    # samples of a labelled set sharing a class are positives) | "ptp" (clip + position-prompt InfoNCE)
    ptp_weight: float = 1.0  # ptp: w in L = L_clip + w·L_prompt (PTP, Wang et al. 2023)
    ptp_concat: bool = False  # append a position prompt to every training caption (PTP's reference data)
    # Also "fusion": L = L_itc + L_itm (+ L_mlm with model.fusion.mlm_probability > 0) + wra_weight · L_wra
    wra_weight: float = 0.0  # fusion: word-region alignment by optimal transport (UNITER uses 0.1); 0 = off
    # Also: "gpt4image" | "medslip" | "velvet" | "ps3" (catalogue items 8-11; their settings below)
    gpt4image: DescriptionConfig = field(default_factory=DescriptionConfig)
    medslip: MeDSLIPConfig = field(default_factory=MeDSLIPConfig)
    velvet: HierarchyConfig = field(default_factory=HierarchyConfig)
    ps3: RegionConfig = field(default_factory=RegionConfig)
    ctp: CTPConfig = field(default_factory=CTPConfig)  # objective "ctp"
    salt: SALTConfig = field(default_factory=SALTConfig)  # objective "salt"
    mvm_weight: float = 1.0  # video-mvm: w in L = L_clip + w·L_mvm (E-ViLM's masked video modelling)


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    # AdamW kernel: "auto" (fused where torch has a fused kernel for every parameter, else foreach),
    # "fused" (one kernel over all tensors), "foreach" (multi-tensor ops) or "for-loop" (one parameter at a time)
    implementation: str = "auto"


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 600
    seed: int = 0
    threads: int = 0  # torch threads; 0 = all cores
    log_every: int = 10
    checkpoint_every: int = 200
    keep_last_k: int = 2
    deterministic: bool = True
    nonfinite_policy: str = "error"  # "error" | "skip"
    max_consecutive_nonfinite: int = 3
    accum_steps: int = 1  # micro-batches per step (GradCache: exact for contrastive losses)
    parallel: str = "replicate"  # multi-process: "replicate" (all-reduce gradients) | "fsdp" (FSDP2 sharding)
    # Exponential moving average of the weights (MindVL-style averaging; 0 = off), saved with every
    # checkpoint as ema.safetensors and used by `vlalign.load` (and so by eval) when on.
    ema_decay: float = 0.0
    # Matmul precision of forward and backward (autocast; weights, optimizer state and the loss stay fp32):
    # "fp32" | "bf16" | "auto" (bf16 only where a short probe measures bf16 matmuls faster than fp32 on this
    # device, cached per machine; CPUs without native bf16 run it many times slower, so they get fp32)
    # | "nvfp4-sim": simulated NVFP4 training of the transformer blocks' linear layers (arXiv 2509.25149)
    precision: str = "auto"
    nvfp4_keep_first: int = 1  # nvfp4-sim: the first N blocks of each tower stay in high precision
    nvfp4_keep_last: int = 1  # nvfp4-sim: the last N blocks of each tower stay in high precision
    grad_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute
    compile: bool = False  # torch.compile the model (inductor); the first steps pay the compilation (minutes on a CPU)
    # Keep freed memory in the process (glibc malloc) instead of returning it to the OS after every step: no
    # page faults on the next step's tensors; resident memory stays at the step's peak (train/heap.py)
    keep_heap: bool = True
    # Where logged steps go beside metrics.jsonl (vlalign.train.sinks): "tensorboard" (event files in
    # RUN/tensorboard; pip install vlalign[tensorboard]), "wandb" (an offline W&B run in RUN/wandb, uploaded
    # later with `wandb sync`; pip install vlalign[wandb])
    log_to: list[str] = field(default_factory=list)
    # Where the model, batches and losses live: "auto" (this process's CUDA device when CUDA is available, else
    # the CPU) | "cpu" | "cuda" | "cuda:N"; vlalign.load and eval / embed / serve follow it (vlalign.device)
    device: str = "auto"


@dataclass(kw_only=True)
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["zeroshot", "retrieval", "compositional"])
    zeroshot_n: int = 1000  # single-object images for zero-shot classification
    retrieval_n: int = 1000
    vqa_n: int = 1000  # held-out questions for the vqa task
    caption_n: int = 200  # held-out images for the caption task (and the alignment diagnostic)
    batch_size: int = 256
    # How zero-shot pools a class's prompts: "mean" embedding, "max" score, or "auto" (max on the shapes world,
    # whose prompts enumerate sizes and positions; mean for paraphrase templates). See vlalign.eval.zeroshot.
    prompt_ensemble: str = "auto"
    rerank_k: int = 16  # retrieval-itm: contrastive top-k candidates the ITM head re-scores


@dataclass(kw_only=True)
class RunConfig:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Choices checked at load time, so a typo fails before any work is done.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.order": ("exact", "resampled", "sequential"),
    "data.normalization": ("auto", "per_channel"),
    "model.vision.patch_embed": ("standard", "channel", "conv"),
    "model.arch": ("dual-encoder", "lm", "vlm", "text-mlm"),
    "model.vision.pool": ("cls", "mean"),
    "model.vision.channel_sampling": ("none", "hcs"),
    "model.vision.channel_sampling_per": ("batch", "sample"),
    "model.vlm.connector": ("linear", "mlp"),
    "model.text.pool": ("eot", "mean"),
    "model.vision.activation": ("gelu", "quick_gelu"),
    "model.text.activation": ("gelu", "quick_gelu"),
    "model.head": ("projection", "fdt", "tokens"),
    "model.fdt.pool": ("max", "mean", "sum"),
    "model.fdt.activation": ("sparsemax", "softmax"),
    "model.fdt.pad_mode": ("neg_inf", "zero"),
    "objective.name": ("clip", "siglip", "fdt", "supervised", "generative", "cgvlm", "filip", "unicl", "ptp",
                       "fusion", "gpt4image", "medslip", "velvet", "ps3", "ctp", "salt",
                       "video-mvm", "text-mlm"),
    "objective.pool": ("mean", "max"),
    "model.adapter.kind": ("none", "lora", "rank-lora", "bottleneck", "mma"),
    "model.adapter.gate": ("none", "module", "head", "element"),
    "train.nonfinite_policy": ("error", "skip"),
    "train.parallel": ("replicate", "fsdp"),
    "train.precision": ("fp32", "bf16", "auto", "nvfp4-sim"),
    "eval.prompt_ensemble": ("auto", "mean", "max"),
    "model.fusion.kind": ("none", "fiber", "manager"),
    "model.fusion.itm_negatives": ("hard", "random"),
    "optim.implementation": ("auto", "fused", "foreach", "for-loop"),
    "model.vlm.projector_init": ("random", "word-converter"),
    "model.video.sampling": ("uniform", "random"),
    "model.video.tokens": ("frame", "pllava"),
    "model.video.pool": ("mean", "attention"),
}

LOG_SINKS = ("tensorboard", "wandb")  # train.log_to

# Objectives that train a causal LM; every other objective trains the dual encoder.
# "text-mlm": the dual encoder's text tower alone, masked-LM pre-training on captions (vlalign.models.text_mlm)
GENERATIVE_OBJECTIVES = {"lm": ("generative",), "vlm": ("generative", "cgvlm"), "text-mlm": ("text-mlm",)}
FREEZABLE_MODULES = ("vision", "connector", "decoder", "visual_experts")  # and sub-modules, e.g. connector.fc1

# Fields that change the shape of a saved tensor or the meaning of a token: resuming with a
# different value is refused (checked by vlalign.train.resume).
STRUCTURAL_FIELDS = (
    "model",
    "data.image_size",
    "data.context_length",
    "data.batch_size",
)


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with validation


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any], source: str = "<dict>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; every key and value is checked against the field types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(prefix, source)}: expected a mapping of keys, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"Unknown config key '{path}' in {source}.{_suggest(key, fields)}")
        kwargs[key] = _coerce(hints[key], value, path, source)
    cfg = cls(**kwargs)
    return cfg


def validate(cfg: RunConfig, source: str = "<config>") -> RunConfig:
    for path, allowed in CHOICES.items():
        value = get_path(cfg, path)
        if value not in allowed:
            raise ConfigError(
                f"Config key '{path}' in {source} is '{value}', which is not one of: {', '.join(allowed)}."
            )
    positive = ("data.image_size", "data.batch_size", "data.context_length", "train.steps", "model.embed_dim",
                "model.vision.patch_size", "model.vision.in_channels", "model.text.vocab_size", "train.accum_steps",
                "train.log_every", "train.checkpoint_every")
    for path in positive:
        if get_path(cfg, path) <= 0:
            raise ConfigError(f"Config key '{path}' in {source} must be positive, got {get_path(cfg, path)}.")
    if cfg.data.image_size % cfg.model.vision.patch_size:
        raise ConfigError(
            f"In {source}: data.image_size ({cfg.data.image_size}) must be a multiple of "
            f"model.vision.patch_size ({cfg.model.vision.patch_size})."
        )
    if not cfg.model.vision.patch_bias and cfg.model.vision.patch_embed != "standard":
        raise ConfigError(f"In {source}: model.vision.patch_bias=false applies to the standard patch embedding; "
                          f"model.vision.patch_embed is '{cfg.model.vision.patch_embed}'.")
    check_setting(cfg.train.device)
    if cfg.model.num_classes < 0:
        raise ConfigError(f"Config key 'model.num_classes' in {source} must be >= 0, got {cfg.model.num_classes}.")
    if cfg.objective.name == "supervised" and cfg.model.num_classes == 0:
        raise ConfigError(f"In {source}: objective.name=supervised needs a classification head; set model.num_classes "
                          "to the number of classes of the training data.")
    if cfg.data.batch_size % cfg.train.accum_steps:
        raise ConfigError(f"In {source}: data.batch_size ({cfg.data.batch_size}) must be a multiple of "
                          f"train.accum_steps ({cfg.train.accum_steps}).")
    _validate_arch(cfg, source)
    for sink in cfg.train.log_to:
        if sink not in LOG_SINKS:
            raise ConfigError(f"Config key 'train.log_to' in {source} has '{sink}', which is not one of: "
                              f"{', '.join(LOG_SINKS)}.")
    for kind in cfg.objective.hard_negatives:
        if kind not in NEGATIVE_KINDS:
            raise ConfigError(f"Config key 'objective.hard_negatives' in {source} has '{kind}', which is not one of: "
                              f"{', '.join(NEGATIVE_KINDS)}.")
    if cfg.objective.hard_negatives and cfg.objective.name not in ("clip", "siglip", "fdt"):
        raise ConfigError(f"In {source}: objective.hard_negatives needs a contrastive objective (clip, siglip, fdt), "
                          f"not '{cfg.objective.name}'.")
    if cfg.objective.positive_paraphrases and cfg.objective.name not in ("clip", "fdt"):
        raise ConfigError(f"In {source}: objective.positive_paraphrases needs a softmax contrastive objective "
                          f"(clip, fdt), not '{cfg.objective.name}'.")
    if not 0 < cfg.data.fraction <= 1:
        raise ConfigError(f"Config key 'data.fraction' in {source} must be in (0, 1], got {cfg.data.fraction}.")
    _validate_catalogue(cfg, source)
    _validate_fusion(cfg, source)
    _validate_catalogue_more(cfg, source)
    _validate_efficiency(cfg, source)
    _validate_continual(cfg, source)
    _validate_catalogue_rest(cfg, source)
    _validate_adaptation(cfg, source)
    _validate_video(cfg, source)
    return cfg


def _validate_continual(cfg: RunConfig, source: str) -> None:
    """CTP, VPGTrans and Mono-InternVL."""
    ctp, vlm = cfg.objective.ctp, cfg.model.vlm
    if not 0 <= ctp.momentum < 1 or ctp.temperature <= 0 or min(ctp.momentum_weight, ctp.topology_weight) < 0:
        raise ConfigError(f"In {source}: objective.ctp needs momentum in [0, 1), temperature > 0 and weights >= 0; "
                          f"got {ctp}.")
    if cfg.objective.name == "ctp" and not cfg.model.init_from:
        raise ConfigError(f"In {source}: objective.name=ctp continues from the previous task's model: set "
                          "model.init_from to that run's directory.")
    if cfg.objective.name == "ctp" and cfg.train.parallel == "fsdp":
        raise ConfigError(f"In {source}: objective.name=ctp keeps whole copies of the model as teachers; use "
                          "train.parallel=replicate.")
    if vlm.connector_width < 0:
        raise ConfigError(f"Config key 'model.vlm.connector_width' in {source} must be >= 0, got {vlm.connector_width}.")
    if (vlm.connector_width or vlm.inherit_vpg) and vlm.connector != "mlp":
        raise ConfigError(f"In {source}: model.vlm.connector_width and inherit_vpg split the mlp connector into the "
                          "VPG (fc1) and the projector (fc2); set model.vlm.connector=mlp.")
    if vlm.projector_init != "random" and not vlm.inherit_vpg:
        raise ConfigError(f"In {source}: model.vlm.projector_init={vlm.projector_init} composes the inherited "
                          "projector with a word converter; name the run to inherit in model.vlm.inherit_vpg.")
    if cfg.model.text.tokenizer_from and cfg.model.text.tower != "vlalign":
        raise ConfigError(f"In {source}: model.text.tokenizer_from names a run's tokenizer, but the pretrained text "
                          f"tower {cfg.model.text.tower} brings its own; drop one of them.")
    if (vlm.inherit_vpg or vlm.visual_experts) and cfg.model.arch != "vlm":
        raise ConfigError(f"In {source}: model.vlm.inherit_vpg / visual_experts need model.arch=vlm, "
                          f"got '{cfg.model.arch}'.")


def _validate_adaptation(cfg: RunConfig, source: str) -> None:
    """Adapter options: each belongs to the kinds that read it."""
    a = cfg.model.adapter
    if a.sparsity < 0 or (a.sparsity > 0 and a.kind != "rank-lora"):
        raise ConfigError(f"Config key 'model.adapter.sparsity' in {source} is {a.sparsity}: it is the L1 weight "
                          f"of kind rank-lora (>= 0), and model.adapter.kind is '{a.kind}'.")
    if a.gate != "none" and a.kind == "none":
        raise ConfigError(f"In {source}: model.adapter.gate={a.gate} gates adapter outputs; set model.adapter.kind.")
    if a.rank < 1:
        raise ConfigError(f"Config key 'model.adapter.rank' in {source} must be >= 1, got {a.rank}.")


def _validate_video(cfg: RunConfig, source: str) -> None:
    """Video-text alignment: what the video tower needs and what it cannot combine with."""
    v, m = cfg.model.video, cfg.model
    if v.frames < 0:
        raise ConfigError(f"Config key 'model.video.frames' in {source} must be >= 0 (0 = images), got {v.frames}.")
    if (cfg.objective.name == "video-mvm") != (v.mvm_codes > 0) or v.mvm_codes < 0:
        raise ConfigError(f"In {source}: objective.name=video-mvm trains masked video modelling and needs "
                          f"model.video.mvm_codes > 0 (a VQ codebook), and the codebook needs that objective; got "
                          f"objective '{cfg.objective.name}' with model.video.mvm_codes={v.mvm_codes}.")
    if not v.frames:
        if v.mvm_codes or v.slow_fast:
            raise ConfigError(f"In {source}: model.video.mvm_codes / slow_fast act on clips; set model.video.frames.")
        return
    others = {"model.arch": (m.arch, "dual-encoder"), "model.fusion.kind": (m.fusion.kind, "none"),
              "model.vision.merge_r": (m.vision.merge_r, 0), "model.vision.channel_sampling":
              (m.vision.channel_sampling, "none"), "data.cache_dir": (cfg.data.cache_dir, "")}
    for path, (value, needed) in others.items():
        if value != needed:
            raise ConfigError(f"In {source}: model.video.frames={v.frames} (a video tower) needs {path}={needed!r}, "
                              f"got {value!r}.")
    if len(v.pool_grid) != 3 or min(v.pool_grid) < 1:
        raise ConfigError(f"Config key 'model.video.pool_grid' in {source} is (T', h', w'), three counts >= 1; "
                          f"got {v.pool_grid}.")
    if v.slow_fast and (m.vision.patch_embed != "standard" or v.fast_scale < 2
                        or (cfg.data.image_size // v.fast_scale) % m.vision.patch_size):
        raise ConfigError(f"In {source}: model.video.slow_fast encodes fast frames at data.image_size / fast_scale "
                          f"= {cfg.data.image_size} / {v.fast_scale}, which must be a multiple of model.vision."
                          f"patch_size ({m.vision.patch_size}), with fast_scale >= 2 and the standard patch embedding.")
    if not 0 < v.similarity_threshold < 1 or v.change_tolerance < 0 or not 0 < v.mvm_mask_ratio < 1:
        raise ConfigError(f"In {source}: model.video.similarity_threshold and mvm_mask_ratio must be in (0, 1) and "
                          "change_tolerance >= 0.")
    if cfg.objective.mvm_weight < 0 or v.vq_steps < 1:
        raise ConfigError(f"In {source}: objective.mvm_weight must be >= 0 and model.video.vq_steps >= 1.")


def _validate_catalogue(cfg: RunConfig, source: str) -> None:
    """FILIP, prefix conditioning and PTP: the combinations each needs."""
    if cfg.objective.name == "filip" and cfg.model.head != "tokens":
        raise ConfigError(f"In {source}: objective.name=filip scores token against token; set model.head=tokens "
                          f"(it is '{cfg.model.head}').")
    if cfg.model.text.prefix_tokens < 0:
        raise ConfigError(f"Config key 'model.text.prefix_tokens' in {source} must be >= 0, "
                          f"got {cfg.model.text.prefix_tokens}.")
    if cfg.model.text.prefix_tokens and cfg.model.text.tower != "vlalign":
        raise ConfigError(f"In {source}: model.text.prefix_tokens needs the vlalign text tower, not "
                          f"'{cfg.model.text.tower}'. Set model.text.prefix_tokens=0.")
    if cfg.model.init_modules and not cfg.model.init_from:
        raise ConfigError(f"In {source}: model.init_modules {cfg.model.init_modules} selects weights of "
                          "model.init_from, which is empty. Name the run to start from in model.init_from.")
    if cfg.model.vision.locked and cfg.model.arch != "dual-encoder":
        raise ConfigError(f"In {source}: model.vision.locked applies to the dual encoder; for model.arch "
                          f"'{cfg.model.arch}' list 'vision' in model.vlm.freeze instead.")
    needs_meta = (cfg.objective.name in ("unicl", "ptp") or cfg.objective.ptp_concat
                  or cfg.model.text.prefix_tokens > 0)
    if needs_meta and cfg.data.cache_dir:
        raise ConfigError(f"In {source}: data.cache_dir keeps images, captions and labels only; text types and "
                          "scenes (for unicl, ptp, ptp_concat, model.text.prefix_tokens) would be lost. "
                          "Leave data.cache_dir empty.")
    if cfg.objective.ptp_weight < 0:
        raise ConfigError(f"Config key 'objective.ptp_weight' in {source} must be >= 0, got {cfg.objective.ptp_weight}.")


def _validate_fusion(cfg: RunConfig, source: str) -> None:
    """FIBER, UNITER and ManagerTower: fusion and objective "fusion" come together."""
    from vlalign.models.registry import text_size, vision_size

    f, name = cfg.model.fusion, cfg.objective.name
    if (f.kind != "none") != (name == "fusion"):
        raise ConfigError(f"In {source}: objective.name=fusion trains the fusion layers and needs them, and fusion "
                          f"layers need objective.name=fusion; got model.fusion.kind '{f.kind}' with objective "
                          f"'{name}'.")
    if cfg.objective.wra_weight < 0:
        raise ConfigError(f"Config key 'objective.wra_weight' in {source} must be >= 0, got {cfg.objective.wra_weight}.")
    if cfg.eval.rerank_k <= 0:
        raise ConfigError(f"Config key 'eval.rerank_k' in {source} must be positive, got {cfg.eval.rerank_k}.")
    if f.kind == "none":
        return
    m = cfg.model
    if m.arch != "dual-encoder" or m.text.tower != "vlalign" or m.text.prefix_tokens:
        raise ConfigError(f"In {source}: model.fusion.kind={f.kind} runs the vlalign towers' blocks; it needs "
                          "model.arch=dual-encoder, model.text.tower=vlalign and model.text.prefix_tokens=0.")
    if not 0 <= f.mlm_probability < 1:
        raise ConfigError(f"Config key 'model.fusion.mlm_probability' in {source} must be in [0, 1), "
                          f"got {f.mlm_probability}.")
    vision, text = vision_size(m.vision.size), text_size(m.text.size)
    depth = min(vision.depth, text.depth)
    if f.kind == "fiber" and not 1 <= f.num_layers < depth:
        raise ConfigError(f"Config key 'model.fusion.num_layers' in {source} is {f.num_layers}: FIBER fuses the top "
                          f"blocks of each tower and starts below them, so it must be in [1, {depth - 1}] for "
                          f"{m.vision.size} and {m.text.size}.")
    if f.kind == "manager" and (f.num_layers < 1 or not 0 <= f.num_managed_layers <= depth):
        raise ConfigError(f"In {source}: model.fusion.kind=manager needs num_layers >= 1 and num_managed_layers in "
                          f"[0, {depth}] (0 = all layers), got {f.num_layers} and {f.num_managed_layers}.")
    if f.kind == "fiber" and cfg.objective.wra_weight > 0 and vision.width != text.width:
        raise ConfigError(f"In {source}: objective.wra_weight compares fused words with fused patches, which FIBER "
                          f"leaves at the tower widths ({vision.width} vs {text.width}); use towers of one width "
                          "or model.fusion.kind=manager.")


def _validate_catalogue_more(cfg: RunConfig, source: str) -> None:
    """GPT4Image, MeDSLIP, VELVET-Med, PS3 and LanguageBind binding."""
    from vlalign.data.views import ATTRIBUTES

    o, m = cfg.objective, cfg.model
    weights = {"objective.gpt4image.weight": o.gpt4image.weight, "objective.medslip.proto_weight": o.medslip.proto_weight,
               "objective.medslip.stream_weight": o.medslip.stream_weight,
               "objective.medslip.separation_weight": o.medslip.separation_weight,
               "objective.velvet.clause_weight": o.velvet.clause_weight, "objective.velvet.word_weight": o.velvet.word_weight,
               "objective.ps3.region_weight": o.ps3.region_weight}
    for path, value in weights.items():
        if value < 0:
            raise ConfigError(f"Config key '{path}' in {source} must be >= 0, got {value}.")
    if m.description_dim < 0:
        raise ConfigError(f"Config key 'model.description_dim' in {source} must be >= 0, got {m.description_dim}.")
    if o.name == "gpt4image" and (m.num_classes == 0 or m.description_dim == 0):
        raise ConfigError(f"In {source}: objective.name=gpt4image trains a classifier aligned with description "
                          "embeddings: set model.num_classes (the classes of the data) and model.description_dim "
                          "(the width of objective.gpt4image.encoder, 384 for all-MiniLM-L6-v2).")
    unknown = [s for s in m.attribute_streams if s not in ATTRIBUTES]
    if unknown or len(set(m.attribute_streams)) != len(m.attribute_streams):
        raise ConfigError(f"Config key 'model.attribute_streams' in {source} is {m.attribute_streams}: name each "
                          f"stream once, from {', '.join(ATTRIBUTES)}.")
    if m.attribute_streams and o.name != "medslip" or m.description_dim and o.name != "gpt4image":
        raise ConfigError(f"In {source}: model.attribute_streams / model.description_dim add heads that only the "
                          f"medslip / gpt4image objectives train; objective.name is '{o.name}'.")
    if o.name == "medslip":
        if (o.medslip.stream_weight or o.medslip.separation_weight) and not m.attribute_streams:
            raise ConfigError(f"In {source}: objective.medslip aligns attribute streams; set model.attribute_streams "
                              "(e.g. [shape, colour]) or set stream_weight and separation_weight to 0.")
        if o.medslip.separation_weight and len(m.attribute_streams) < 2:
            raise ConfigError(f"In {source}: objective.medslip.separation_weight separates two streams; "
                              f"model.attribute_streams has {len(m.attribute_streams)}.")
        if o.medslip.proto_warmup_steps < 0:
            raise ConfigError(f"Config key 'objective.medslip.proto_warmup_steps' in {source} must be >= 0, "
                              f"got {o.medslip.proto_warmup_steps}.")
        if any(k < 1 for k in o.medslip.num_prototypes):
            raise ConfigError(f"Config key 'objective.medslip.num_prototypes' in {source} needs clusterings of k >= 1, "
                              f"got {o.medslip.num_prototypes}.")
    if o.name == "velvet" and o.velvet.word_weight and m.head != "tokens":
        raise ConfigError(f"In {source}: objective.velvet.word_weight scores words against patches; set "
                          "model.head=tokens, or objective.velvet.word_weight=0.")
    if o.velvet.max_clauses < 1:
        raise ConfigError(f"Config key 'objective.velvet.max_clauses' in {source} must be >= 1, got {o.velvet.max_clauses}.")
    if o.name in ("medslip", "ps3") and cfg.data.cache_dir:
        raise ConfigError(f"In {source}: objective.name={o.name} reads each sample's scene, which data.cache_dir "
                          "does not keep. Leave data.cache_dir empty.")
    if m.arch != "dual-encoder" and (m.description_dim or m.attribute_streams):
        raise ConfigError(f"In {source}: model.description_dim and model.attribute_streams add heads to the dual "
                          f"encoder; model.arch '{m.arch}' would ignore them. Leave them at 0 and [].")
    if m.text.lock_projection and not m.text.locked:
        raise ConfigError(f"In {source}: model.text.lock_projection fixes the text space only with the tower "
                          "fixed too; set model.text.locked=true.")


def _validate_efficiency(cfg: RunConfig, source: str) -> None:
    """Token merging, EMA, simulated low precision, packing, the resolution curriculum and SALT."""
    vision = cfg.model.vision
    salt = cfg.objective.salt
    if cfg.objective.name == "salt" and not salt.teacher:
        raise ConfigError(f"In {source}: objective.name=salt distils a trained teacher; set objective.salt.teacher "
                          "to a dual-encoder run directory.")
    if salt.kd_weight < 0 or salt.kd_steps < 0 or salt.temperature <= 0:
        raise ConfigError(f"In {source}: objective.salt needs kd_weight >= 0, kd_steps >= 0 and temperature > 0; got "
                          f"{salt.kd_weight}, {salt.kd_steps} and {salt.temperature}.")
    if cfg.objective.name == "salt" and cfg.data.cache_dir:
        raise ConfigError(f"In {source}: objective.name=salt feeds the teacher raw samples, which data.cache_dir "
                          "does not keep. Leave data.cache_dir empty.")
    if cfg.data.pack_length < 0 or cfg.data.pack_length and cfg.model.arch == "dual-encoder":
        raise ConfigError(f"Config key 'data.pack_length' in {source} is {cfg.data.pack_length}: it packs the "
                          "examples of a generative run (model.arch lm or vlm) and must be >= 0 (0 = off).")
    for size in cfg.data.resolution_schedule:
        if size <= 0 or size % vision.patch_size or size > cfg.data.image_size:
            raise ConfigError(f"Config key 'data.resolution_schedule' in {source} has {size}: every size must be a "
                              f"multiple of model.vision.patch_size ({vision.patch_size}) and at most "
                              f"data.image_size ({cfg.data.image_size}).")
    if cfg.data.resolution_schedule and (cfg.model.arch != "dual-encoder" or vision.patch_embed == "conv"):
        raise ConfigError(f"In {source}: data.resolution_schedule changes the number of image tokens, which the "
                          f"'{cfg.model.arch}' arch's decoder positions / the conv stem's fixed grid do not allow; "
                          "use it with model.arch=dual-encoder and a standard or channel patch embedding.")
    d = cfg.data
    if not 0 <= d.text_ratio < 1 or (d.text_ratio > 0) != bool(d.text_mixture):
        raise ConfigError(f"In {source}: data.text_ratio={d.text_ratio} must be in [0, 1) and set (> 0) together with "
                          f"data.text_mixture={d.text_mixture!r}, the text-only data spec, e.g. shapes-qa:n=3000,seed=3.")
    if (d.text_ratio > 0 or d.text_heldout) and (cfg.model.arch not in ("lm", "vlm") or d.pack_length):
        raise ConfigError(f"In {source}: data.text_ratio / data.text_heldout are for the generative archs (lm, vlm) "
                          "without data.pack_length.")
    if d.text_ratio > 0 and (cfg.model.arch != "vlm" or cfg.objective.name != "generative"):
        raise ConfigError(f"In {source}: data.text_ratio mixes text-only batches into a vlm's image-text training "
                          "and needs model.arch=vlm with objective.name=generative (cgvlm's loss needs images).")
    if (vision.merge_r or any(vision.merge_schedule)) and cfg.model.arch != "dual-encoder":
        raise ConfigError(f"In {source}: model.vision.merge_r / merge_schedule apply to the dual encoder only; the "
                          f"'{cfg.model.arch}' arch feeds a fixed number of image tokens to its language model.")
    if not 0 <= cfg.train.ema_decay < 1:
        raise ConfigError(f"Config key 'train.ema_decay' in {source} must be in [0, 1) (0 = no EMA), "
                          f"got {cfg.train.ema_decay}.")
    if cfg.train.nvfp4_keep_first < 0 or cfg.train.nvfp4_keep_last < 0:
        raise ConfigError(f"In {source}: train.nvfp4_keep_first and train.nvfp4_keep_last count blocks kept in "
                          "high precision and must be >= 0.")
    text = cfg.model.text
    if text.committee < 1 or text.depth < 0:
        raise ConfigError(f"In {source}: model.text.committee must be >= 1 (towers averaged) and model.text.depth "
                          f">= 0 (0 = the size's depth); got {text.committee} and {text.depth}.")
    if (text.committee > 1 or text.depth) and (text.tower != "vlalign" or cfg.model.fusion.kind != "none"):
        raise ConfigError(f"In {source}: model.text.committee / model.text.depth shape the vlalign text tower and "
                          "cannot be used with a Hugging Face tower or model.fusion (which runs one tower's blocks).")


def _validate_catalogue_rest(cfg: RunConfig, source: str) -> None:
    """Florence-VL depth-breadth features and SAIL-VL's quality curriculum."""
    from vlalign.models.depth_breadth import VIEWS
    from vlalign.models.registry import vision_size

    if cfg.data.train.startswith("curriculum:") and cfg.data.order != "sequential":
        raise ConfigError(f"In {source}: data.train is a quality curriculum, whose order is its schedule; "
                          f"data.order '{cfg.data.order}' would shuffle it. Set data.order=sequential.")
    v = cfg.model.vlm
    depth = vision_size(cfg.model.vision.size).depth
    if any(not -depth <= d < depth for d in v.feature_depths) or len(set(v.feature_depths)) != len(v.feature_depths):
        raise ConfigError(f"Config key 'model.vlm.feature_depths' in {source} is {v.feature_depths}: name distinct "
                          f"blocks of the {depth}-block {cfg.model.vision.size} tower, in [{-depth}, {depth - 1}].")
    if any(view not in VIEWS for view in v.feature_views) or len(set(v.feature_views)) != len(v.feature_views):
        raise ConfigError(f"Config key 'model.vlm.feature_views' in {source} is {v.feature_views}: name distinct "
                          f"views from {', '.join(VIEWS)}.")


def _validate_arch(cfg: RunConfig, source: str) -> None:
    arch, objective = cfg.model.arch, cfg.objective.name
    generative = {name for names in GENERATIVE_OBJECTIVES.values() for name in names}
    allowed = GENERATIVE_OBJECTIVES.get(arch)
    if allowed is not None and objective not in allowed:
        raise ConfigError(f"In {source}: model.arch '{arch}' trains with objective.name one of "
                          f"{', '.join(allowed)}, got '{objective}'.")
    if allowed is None and objective in generative:
        raise ConfigError(f"In {source}: objective.name '{objective}' trains a language model; "
                          "set model.arch to 'vlm' (or 'lm' for the generative objective).")
    if allowed is not None:
        dual_only = {"model.head": "projection", "model.adapter.kind": "none", "model.text.tower": "vlalign",
                     "model.num_classes": 0}
        for path, default in dual_only.items():
            if get_path(cfg, path) != default:
                raise ConfigError(f"In {source}: {path} '{get_path(cfg, path)}' applies to the dual encoder only; "
                                  f"model.arch '{arch}' would ignore it. Leave it at '{default}'.")
    unknown = [name for name in cfg.model.vlm.freeze if name.split(".")[0] not in FREEZABLE_MODULES]
    if unknown:
        raise ConfigError(f"Config key 'model.vlm.freeze' in {source} names '{unknown[0]}'; "
                          f"freezable modules are: {', '.join(FREEZABLE_MODULES)}.")
    if cfg.objective.contrastive_weight < 0:
        raise ConfigError(f"Config key 'objective.contrastive_weight' in {source} must be >= 0, "
                          f"got {cfg.objective.contrastive_weight}.")
    if cfg.objective.contrastive_words not in ("all", "content"):
        raise ConfigError(f"Config key 'objective.contrastive_words' in {source} must be 'all' or 'content', "
                          f"got {cfg.objective.contrastive_words!r}.")
    if not 0 <= cfg.objective.answer_share <= 1:
        raise ConfigError(f"Config key 'objective.answer_share' in {source} must be in [0, 1], "
                          f"got {cfg.objective.answer_share}.")


def _coerce(tp: Any, value: Any, path: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, prefix=f"{path}.")
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and type(None) in typing.get_args(tp):
            return None
        for option in options:
            try:
                return _coerce(option, value, path, source)
            except ConfigError:
                continue
        raise ConfigError(f"Config key '{path}' in {source} has the wrong type: {value!r}.")
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if isinstance(value, str):  # --set data.holdout=a,b is a list of two
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"Config key '{path}' in {source} expects a list, got {value!r}.")
        return [_coerce(item_type, v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"Config key '{path}' in {source} expects true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"Config key '{path}' in {source} expects an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"Config key '{path}' in {source} expects a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"Config key '{path}' in {source} expects text, got {value!r}.")
    raise ConfigError(f"Config key '{path}' in {source}: unsupported type {tp}.")


def _suggest(key: str, fields: Any) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1)
    valid = ", ".join(fields)
    return (f" Did you mean '{close[0]}'?" if close else "") + f" Valid keys here: {valid}."


def _where(prefix: str, source: str) -> str:
    return f"'{prefix.rstrip('.')}' in {source}" if prefix else source


# ---------------------------------------------------------------------------------------------
# paths, overrides, YAML


def get_path(cfg: Any, path: str) -> Any:
    value = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def apply_overrides(cfg: RunConfig, overrides: list[str], source: str = "--set") -> RunConfig:
    """Apply ``key.path=value`` strings; values are parsed as YAML scalars (``1e-3``, ``true``, ``[a, b]``)."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source} {item!r}: expected key.path=value, e.g. --set optim.lr=3e-4.")
        path, raw = item.split("=", 1)
        path = path.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = path.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                keys = list(node) if isinstance(node, dict) else []
                where = ".".join(parts[:i]) or "the top level"
                raise ConfigError(
                    f"Unknown config key '{path}' in {source} {item!r} (no '{part}' under {where})."
                    + (_suggest(part, keys) if keys else "")
                )
            if i == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise ConfigError(f"{source} {item!r}: '{path}' is a section; set one of its keys instead.")
                node[part] = value
            else:
                node = node[part]
    return validate(from_dict(RunConfig, data, source), source)


def merge_dict(cfg: RunConfig, data: dict[str, Any], source: str) -> RunConfig:
    """Overlay a (partial) nested mapping, e.g. a YAML file, on ``cfg``."""
    base = to_dict(cfg)

    def overlay(dst: dict, src: Any, prefix: str) -> None:
        if not isinstance(src, dict):
            raise ConfigError(f"{_where(prefix, source)}: expected a mapping, got {src!r}.")
        for key, value in src.items():
            path = f"{prefix}{key}"
            if key not in dst:
                raise ConfigError(f"Unknown config key '{path}' in {source}.{_suggest(str(key), dst)}")
            if isinstance(dst[key], dict) and isinstance(value, dict):
                overlay(dst[key], value, f"{path}.")
            else:
                dst[key] = value

    overlay(base, data, "")
    return validate(from_dict(RunConfig, base, source), source)


def load_yaml(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    return merge_dict(base or RunConfig(), read_yaml(path), str(path))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (empty for an empty file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}.")
    return data


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Field-by-field differences between two nested config dicts, as 'key: old -> new' lines."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += diff(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return lines
