"""Turn a ``RunConfig`` into ready components: seed, threads, data, tokenizer, model, objective."""

from __future__ import annotations

import functools
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vlalign.checkpoint import latest_checkpoint
from vlalign.config import RunConfig
from vlalign.data.cache import DecodedCache
from vlalign.data.generative import collate_generative
from vlalign.data.loader import Loader, collate
from vlalign.data.mixture import texts_of
from vlalign.data.ptp import all_prompts
from vlalign.data.sample import Source
from vlalign.data.specs import build_source
from vlalign.data.tokenizer import TextTokenizer, train_tokenizer
from vlalign.data.transforms import PREPROCESS_FILE, ImageTransform, channel_statistics
from vlalign.data.teacher_view import TeacherView
from vlalign.data.text_mixture import MixtureLoader
from vlalign.data.views import AttributeView, ClauseView, DescriptionView, RegionView, View
from vlalign.device import resolve_device
from vlalign.errors import CheckpointError, ConfigError
from vlalign.models import DualEncoder, build_model
from vlalign.models.adapters import parameter_counts
from vlalign.models.hf_text import copy_hf_tokenizer, is_hf_tower
from vlalign.models.nvfp4 import apply_nvfp4
from vlalign.models.text_cache import cached_text_embeddings
from vlalign.models.transfer import language_model_source, load_matching_weights, text_tower_source
from vlalign.models.vlm import VisionLanguageModel
from vlalign.models.vpg_transfer import inherit_vpg
from vlalign.objectives import Objective, build_objective
from vlalign.pretrained import external_init, open_checkpoint
from vlalign.train.acceleration import enable_grad_checkpointing
from vlalign.train.continual import ContinualTeachers
from vlalign.train.vq import pretrain_tokenizer
from vlalign.train.text_retention import HeldoutText

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
DESCRIPTIONS_FILE = "descriptions.safetensors"  # GPT4Image's cached description embeddings
PARAMS_FILE = "parameters.json"  # total and trainable parameter counts (adapters and locked towers train fewer)
MAX_TOKENIZER_CAPTIONS = 50_000


def seed_everything(seed: int, deterministic: bool, threads: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_threads(threads: int, local_world: int) -> int:
    """``train.threads``; 0 means all cores, shared evenly between the processes on this machine."""
    if threads > 0 or local_world <= 1:
        return threads
    return max(1, (os.cpu_count() or 1) // local_world)


def subset(source: Source, fraction: float, seed: int) -> Source:
    """A deterministic ``fraction`` of ``source`` (the same samples for the same seed)."""
    if fraction >= 1.0:
        return source
    keep = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed + 17))
    return Subset(source, sorted(keep[: max(1, int(len(source) * fraction))].tolist()))


class Subset:
    def __init__(self, source: Source, indices: list[int]):
        self.source, self.indices = source, indices
        self.name = f"{source.name}[{len(indices)} of {len(source)}]"
        self.classes, self.channel_names = source.classes, source.channel_names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[self.indices[i]]

    def __getattr__(self, name: str):  # source-specific helpers (e.g. the shapes world's config)
        return getattr(self.source, name)


def source_captions(source: Source, limit: int = MAX_TOKENIZER_CAPTIONS) -> list[str]:
    if hasattr(source, "texts"):  # every text of the source, e.g. questions and answers beside the captions
        return source.texts()[:limit]
    if hasattr(source, "captions"):
        return list(source.captions())[:limit]
    return [source[i].caption for i in range(min(len(source), limit))]


def image_transform(cfg: RunConfig, source: Source) -> ImageTransform:
    spec = external_init(cfg)
    if spec is not None:  # a pretrained CLIP reads pixels normalised as in its pre-training
        return open_checkpoint(spec).transform()
    if cfg.data.normalization == "per_channel":
        mean, std = channel_statistics(source)
    else:
        norm = getattr(source, "normalization", None)  # (mean, std) per channel, for non-8-bit sources
        mean, std = norm if norm is not None else (None, None)
    return ImageTransform(cfg.data.image_size, cfg.model.vision.in_channels, mean, std)


@dataclass
class Components:
    source: Source
    tokenizer: TextTokenizer
    model: DualEncoder | VisionLanguageModel
    objective: Objective
    loader: Loader
    device: torch.device  # where the model is, and where batches go (train.device)
    teachers: ContinualTeachers | None = None  # CTP's reference and momentum models (objective "ctp")
    heldout: HeldoutText | None = None  # data.text_heldout: the LM's text loss, logged (DeepSeek-VL retention)


def build_tokenizer(cfg: RunConfig, source: Source, run_dir: Path) -> TextTokenizer:
    """Load the run's tokenizer if it exists (resume); else take the one of ``model.text.tokenizer_from``, or
    inherit the one of the language model or text tower this run starts from (``model.init_from``: the
    vocabulary belongs to its embeddings), or train one on the training texts. Then save it with the run."""
    path = run_dir / TOKENIZER_FILE
    if path.is_file():
        return TextTokenizer.load(path)
    if is_hf_tower(cfg.model.text.tower):  # a pretrained text tower brings its own tokenizer
        run_dir.mkdir(parents=True, exist_ok=True)
        copy_hf_tokenizer(cfg.model.text.tower, path)
        return TextTokenizer.load(path)
    spec = external_init(cfg)
    if spec is not None:  # so does a pretrained CLIP
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = open_checkpoint(spec).tokenizer()
        tokenizer.save(path)
        return tokenizer
    if cfg.model.text.tokenizer_from:
        inherited = Path(cfg.model.text.tokenizer_from)
        if not (inherited / TOKENIZER_FILE).is_file():
            raise CheckpointError(f"model.text.tokenizer_from: {inherited} has no {TOKENIZER_FILE}; train that run "
                                  "first, or point model.text.tokenizer_from at its --out directory.")
    elif cfg.model.arch == "dual-encoder":
        inherited = text_tower_source(cfg.model.init_from, cfg.model.init_modules)
    else:
        inherited = language_model_source(cfg.model.init_from)
    if inherited is not None:
        tokenizer = TextTokenizer.load(inherited / TOKENIZER_FILE)
    else:
        extra = all_prompts() if position_prompts(cfg) != "none" else []  # PTP's prompt words get tokens too
        tokenizer = train_tokenizer(source_captions(source) + extra, cfg.model.text.vocab_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(path)
    return tokenizer


def build_components(cfg: RunConfig, run_dir: Path, rank: int = 0, world: int = 1) -> Components:
    source = build_source(cfg.data.train)
    if cfg.data.cache_dir:
        source = DecodedCache(source, cfg.data.cache_dir, cfg.data.image_size, cfg.data.num_workers)
    source = subset(source, cfg.data.fraction, cfg.train.seed)
    tokenizer = build_tokenizer(cfg, source, run_dir)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(cfg.model, cfg.data.image_size, tokenizer.vocab_size, cfg.data.context_length)
    fresh = latest_checkpoint(run_dir / "checkpoints") is None  # a resume restores instead
    if cfg.model.init_from and fresh:
        load_matching_weights(model, cfg.model.init_from, cfg.model.init_modules)
    if cfg.model.vlm.inherit_vpg and fresh:  # VPGTrans: after the new LM's weights, which the projector reads
        inherit_vpg(model, cfg.model.vlm.inherit_vpg, cfg.model.vlm.projector_init, run_dir / TOKENIZER_FILE)
    if isinstance(model, VisionLanguageModel):
        freeze(model, cfg)
        model.pack_length = cfg.data.pack_length
    if cfg.train.precision == "nvfp4-sim":
        simulate_nvfp4(model, cfg)
    if cfg.train.grad_checkpointing:
        enable_grad_checkpointing(model)
    transform = image_transform(cfg, source)
    mvm = getattr(model.vision, "mvm", None) if isinstance(model, DualEncoder) else None
    if mvm is not None and latest_checkpoint(run_dir / "checkpoints") is None:  # E-ViLM: the tokenizer comes first
        pretrain_tokenizer(mvm.tokenizer, source, transform, cfg.model.video.vq_steps, cfg.train.seed)
    if rank == 0:
        transform.save(run_dir / PREPROCESS_FILE)
        (run_dir / PARAMS_FILE).write_text(json.dumps(parameter_counts(model), indent=1))
    collate_fn = functools.partial(collate, negative_kinds=tuple(cfg.objective.hard_negatives),
                                   negative_seed=cfg.train.seed, position_prompts=position_prompts(cfg),
                                   with_text_types=cfg.model.text.prefix_tokens > 0 or cfg.objective.name == "unicl",
                                   views=batch_views(cfg, source, run_dir),
                                   paraphrases=cfg.objective.positive_paraphrases)
    if cfg.model.arch != "dual-encoder":  # generative examples; text only for the language model
        collate_fn = functools.partial(collate_generative, with_image=cfg.model.arch == "vlm")
    device = resolve_device(cfg.train.device)
    pinned = device.type == "cuda"
    loader = Loader(source, tokenizer, transform, cfg.data.batch_size // world,
                    cfg.data.context_length, seed=cfg.train.seed, rank=rank, world=world,
                    num_workers=cfg.data.num_workers, max_skip_fraction=cfg.data.max_skip_fraction,
                    collate_fn=collate_fn, order=cfg.data.order, pin_memory=pinned)
    if cfg.data.text_ratio > 0:  # DeepSeek-VL: text-only batches in share text_ratio (vlalign.data.text_mixture)
        text_loader = Loader(build_source(cfg.data.text_mixture), tokenizer, transform, cfg.data.batch_size // world,
                             cfg.data.context_length, seed=cfg.train.seed + 1, rank=rank, world=world,
                             max_skip_fraction=cfg.data.max_skip_fraction, order=cfg.data.order,
                             collate_fn=functools.partial(collate_generative, with_image=False), pin_memory=pinned)
        loader = MixtureLoader(loader, text_loader, cfg.data.text_ratio)
    heldout = HeldoutText(build_source(cfg.data.text_heldout), tokenizer, cfg.data.context_length) \
        if cfg.data.text_heldout else None
    model.to(device)  # after the CPU-side preparation above (VQ pre-training), before CTP copies it
    teachers = ContinualTeachers(model, cfg.model.init_from, cfg.objective.ctp.momentum) \
        if cfg.objective.name == "ctp" else None
    return Components(source, tokenizer, model, build_objective(cfg.objective), loader, device, teachers, heldout)


def batch_views(cfg: RunConfig, source: Source, run_dir: Path) -> tuple[View, ...]:
    """The extra views of each sample that the objective reads (``vlalign.data.views``)."""
    o = cfg.objective
    if o.name == "velvet":
        return (ClauseView(o.velvet.max_clauses),)
    if o.name == "medslip" and cfg.model.attribute_streams:
        return (AttributeView(tuple(cfg.model.attribute_streams)),)
    if o.name == "ps3":
        return (RegionView(cfg.train.seed),)
    if o.name == "salt":  # the teacher embeds every batch's raw pairs (SALT, vlalign.objectives.salt)
        from vlalign.api import Aligner, load

        teacher = load(o.salt.teacher, device="cpu")  # it runs in the data workers, which cannot use CUDA
        if not isinstance(teacher, Aligner):
            raise ConfigError(f"objective.salt.teacher {o.salt.teacher} is a '{teacher.config.model.arch}' run; the "
                              "teacher must be a dual encoder.")
        return (TeacherView(teacher),)
    if o.name == "gpt4image":  # every distinct caption embedded once by the frozen encoder, kept with the run
        texts = sorted(set(texts_of(source)))
        return (DescriptionView(texts, cached_text_embeddings(o.gpt4image.encoder, texts,
                                                              run_dir / DESCRIPTIONS_FILE)),)
    return ()


def simulate_nvfp4(model, cfg: RunConfig) -> None:
    """train.precision=nvfp4-sim: the blocks' linear layers train with simulated NVFP4 GEMMs."""
    swapped = apply_nvfp4(model, cfg.train.nvfp4_keep_first, cfg.train.nvfp4_keep_last)
    if not swapped:
        log.warning("train.precision=nvfp4-sim quantises nothing: every block is kept in high precision by "
                    "train.nvfp4_keep_first=%d / nvfp4_keep_last=%d; lower them", cfg.train.nvfp4_keep_first,
                    cfg.train.nvfp4_keep_last)
    log.info("nvfp4-sim: %d linear layers in NVFP4", len(swapped))


def position_prompts(cfg: RunConfig) -> str:
    """How PTP's position prompts enter the batch: "auxiliary" (objective ptp), "concat" or "none"."""
    if cfg.objective.name == "ptp":
        return "auxiliary"
    return "concat" if cfg.objective.ptp_concat else "none"


def freeze(model: VisionLanguageModel, cfg: RunConfig) -> None:
    """Fix the modules named in ``model.vlm.freeze``; something must be left to train."""
    model.freeze(cfg.model.vlm.freeze)
    if not any(p.requires_grad for name, p in model.named_parameters() if name != "logit_scale"):
        raise ConfigError(f"model.vlm.freeze={cfg.model.vlm.freeze} freezes every weight of this "
                          f"'{cfg.model.arch}' model: nothing would train. Remove a module from the list.")
