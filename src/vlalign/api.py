"""``vlalign.load(run_dir)``: a trained model ready for inference, with its tokenizer and preprocessing.

A dual-encoder run loads as an ``Aligner`` (embeddings); a generative run ("lm" or "vlm") as a
``VisualAssistant`` (answers, captions).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import yaml
from PIL import Image

from vlalign.checkpoint import EMA_FILE, latest_checkpoint, load_checkpoint, load_ema
from vlalign.config import RunConfig, from_dict
from vlalign.data.generative import encode_prompts
from vlalign.data.images import image_array, is_single_image
from vlalign.data.tokenizer import TextTokenizer
from vlalign.data.transforms import PREPROCESS_FILE, ImageTransform
from vlalign.device import model_device, resolve_device, to_device
from vlalign.errors import CheckpointError, VlalignError
from vlalign.models import DualEncoder, build_model
from vlalign.models.factory import num_image_tokens
from vlalign.models.vlm import VisionLanguageModel

ANSWER_TOKENS = 8  # shapes answers are one word; a little room for a wrong, longer one
# Tokens per vision-tower call at CPU inference. A chunk whose activations stay in the CPU cache from layer
# to layer runs faster than one large batch: config "A" (width 256, 65 tokens per image) encodes about 1.3x
# faster in chunks of 32 images than in one batch of 256; at 2k-4k tokens per call widths 128-768 all ran
# at or near their best (benchmarks/results/vs_open_clip.md, "Inference").
CPU_CHUNK_TOKENS = 2048
# One image as ``Aligner.encode_image`` and ``preprocess`` take it (``vlalign.data.images.image_array``).
ImageInput = np.ndarray | torch.Tensor | Image.Image | str | Path


@dataclass
class Aligner:
    """A loaded model. ``encode_image`` / ``encode_text`` take raw inputs and return unit-norm embeddings.

    Inference runs under ``torch.inference_mode`` with pooled-only towers (the last block computes the
    CLS / EOT token alone), on the model's device (``vlalign.load(..., device=...)``); embeddings come back
    where their inputs were: on the host for texts, arrays and images (ready for numpy, safetensors and the
    evaluation code), on the GPU for a pixel tensor passed on the GPU. On CPU, images go through the vision tower in cache-sized chunks
    (``CPU_CHUNK_TOKENS``). Texts are encoded longest first in chunks of about ``max_tokens`` real
    tokens, each chunk cut to its longest caption, so short captions do not pay for a long context;
    the embeddings come back in the input order. ``compile()`` adds ``torch.compile``.
    """

    model: DualEncoder
    tokenizer: TextTokenizer
    transform: ImageTransform
    config: RunConfig
    run_dir: Path
    step: int
    int8: bool = field(default=False, init=False)  # set by quantize_int8()

    def __post_init__(self):
        self._encode_image = functools.partial(self.model.encode_image, pooled_only=True)
        self._encode_text = functools.partial(self.model.encode_text, pooled_only=True)

    def compile(self) -> Aligner:
        """Compile both encoders with ``torch.compile`` (inductor, weights frozen into the graph: CPU
        inference gets pre-packed matmul weights). The first call of each new batch shape compiles
        (minutes on a small CPU); use it for long-running services and bulk embedding."""
        options = {"freezing": True}
        self._encode_image = torch.compile(self._encode_image, options=options)
        self._encode_text = torch.compile(self._encode_text, options=options)
        return self

    def quantize_int8(self) -> Aligner:
        """Run both towers' linear layers in int8 (``vlalign.models.int8``), in place: faster CPU inference
        on x86, embeddings approximate (cosine 0.999 or more to the fp32 ones on the default recipe's run).
        The heads stay fp32, and so does a pretrained Hugging Face text tower: all-MiniLM-L6-v2's
        activations have outliers that one scale per call represents poorly (cosine 0.97-0.98 to fp32).
        LoRA updates are merged into their weights first. Call before ``compile()``; the model is
        inference-only afterwards."""
        from vlalign.models.adapters import merge_adapters
        from vlalign.models.hf_text import HFTextTower
        from vlalign.models.int8 import quantize_linears

        if self.config.model.adapter.kind in ("lora", "rank-lora"):  # wrappers read their base layer's weight
            merge_adapters(self.model)
        quantize_linears(self.model.vision)
        if not isinstance(self.model.text, HFTextTower):
            quantize_linears(self.model.text)
        self.int8 = True
        return self

    @torch.inference_mode()
    def encode_text(self, texts: str | Sequence[str], batch_size: int = 512, max_tokens: int = 4096) -> torch.Tensor:
        """One string -> [1, E]; a list of N strings -> [N, E] (as open_clip's tokenizer and ``encode_text``).
        At most ``batch_size`` texts and about ``max_tokens`` tokens per chunk."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return torch.empty(0, self.embed_dim)
        ids, mask = self.tokenizer(texts, self.config.data.context_length)  # [N, L]
        return self.encode_tokens(ids, mask, batch_size, max_tokens)

    @torch.inference_mode()
    def encode_tokens(self, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 512,
                      max_tokens: int = 4096) -> torch.Tensor:
        """Right-padded token ids and mask [N, L] -> [N, E], longest first in length-cut chunks, in input order."""
        order = mask.sum(1).argsort(descending=True, stable=True)  # longest first
        out, start = None, 0
        while start < len(order):
            longest = max(int(mask[order[start]].sum()), 1)
            rows = order[start : start + max(1, min(batch_size, max_tokens // longest))]
            embeds = self._encode_text(ids[rows, :longest].to(self.device), mask[rows, :longest].to(self.device))
            if out is None:
                out = torch.empty(len(ids), embeds.shape[1], dtype=embeds.dtype, device=ids.device)
            out[rows] = embeds.to(ids.device)  # [n, E]
            start += len(rows)
        return out if out is not None else torch.empty(0, self.embed_dim)

    @torch.inference_mode()
    def encode_image(self, images: ImageInput | Sequence[ImageInput] | torch.Tensor, batch_size: int = 256,
                     max_tokens: int | None = None) -> torch.Tensor:
        """Images -> [N, E]; one image -> [1, E].

        ``images``: one image or a list of them, each a PIL image, a file path, or an array: ``[C, H, W]``
        or ``[H, W, C]`` (uint8, or float in [0, 1] for a model trained on pictures; see
        ``vlalign.data.images.image_array``); they are resized to the model's size as in training. Or a
        tensor of preprocessed pixels (``preprocess``): ``[N, C, S, S]``, or one image ``[C, S, S]``.

        ``batch_size`` images are transformed at a time; the tower then runs on chunks of about
        ``max_tokens`` tokens (default: ``CPU_CHUNK_TOKENS`` on CPU, the whole batch elsewhere)."""
        if is_single_image(images):
            images = images[None] if torch.is_tensor(images) else [images]
        out = []
        for i in range(0, len(images), batch_size):
            pixels = self._pixels(images[i : i + batch_size])
            out += [self._encode_image(part.to(self.device)).to(part.device)
                    for part in pixels.split(self._images_per_call(pixels, max_tokens))]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def _pixels(self, images: Sequence[ImageInput] | torch.Tensor, crop: bool = False) -> torch.Tensor:
        """Images in any accepted form -> the tower's input [N, C, S, S] (a tensor is taken as preprocessed)."""
        if torch.is_tensor(images):
            return images
        channels, eight_bit = self.transform.in_channels, self.transform.mean is None
        return self.transform([image_array(image, channels, eight_bit) for image in images], crop)

    def _images_per_call(self, pixels: torch.Tensor, max_tokens: int | None) -> int:
        """Images per tower call for ``pixels`` [B, C, H, W] (or clips [B, T, C, H, W]): about ``max_tokens``
        tokens, CLS included."""
        if max_tokens is None:
            if self.device.type != "cpu":
                return max(1, len(pixels))  # an accelerator wants the largest batch
            max_tokens = CPU_CHUNK_TOKENS
        frames = pixels.shape[1] if pixels.ndim == 5 else 1
        tokens = frames * (1 + num_image_tokens(self.config.model, pixels.shape[-1]))
        return max(1, max_tokens // tokens)

    @property
    def late_interaction(self) -> bool:
        """True for a FILIP run: evaluation scores token against token (``vlalign.objectives.filip``), as
        it was trained; ``encode_image``/``encode_text`` still give the (untrained by FILIP) pooled embeddings."""
        return self.config.objective.name == "filip"

    @torch.inference_mode()
    def encode_text_tokens(self, texts: Sequence[str], batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """list of N strings -> per-token embeddings [N, L, E] and mask [N, L] (a model.head=tokens run)."""
        tokens, masks = [], []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer(list(texts[i : i + batch_size]), self.config.data.context_length)
            out = self.model.text_token_embeds(ids.to(self.device), mask.to(self.device))
            tokens.append(out[0].to(ids.device))
            masks.append(out[1].to(ids.device))
        return torch.cat(tokens), torch.cat(masks)

    @torch.inference_mode()
    def encode_image_tokens(self, images: Sequence[ImageInput] | torch.Tensor,
                            batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as for ``encode_image`` -> per-patch embeddings [N, T, E] and mask [N, T]."""
        tokens, masks = [], []
        for i in range(0, len(images), batch_size):
            pixels = self._pixels(images[i : i + batch_size])
            out = self.model.image_token_embeds(pixels.to(self.device))
            tokens.append(out[0].to(pixels.device))
            masks.append(out[1].to(pixels.device))
        return torch.cat(tokens), torch.cat(masks)

    def preprocess(self, images: ImageInput | Sequence[ImageInput], crop: bool = True) -> torch.Tensor:
        """open_clip's ``preprocess``: one image (PIL image, path or array, as for ``encode_image``) ->
        ``[C, S, S]``; a list of them -> ``[N, C, S, S]``; normalised as the run's training data was.

        ``crop``: the shorter side resized to S and the centre S x S kept, as open_clip does; False resizes
        the whole image to S x S as training did (what ``encode_image`` does with raw images; the same
        pixels for a square image). ``encode_image`` takes the result."""
        if is_single_image(images):
            return self._pixels([images], crop)[0]
        return self._pixels(list(images), crop)

    @property
    def device(self) -> torch.device:
        """Where the towers run."""
        return model_device(self.model)

    @property
    def embed_dim(self) -> int:
        """Width of the embeddings: the FDT code width with an FDT head, else ``model.embed_dim``."""
        m = self.config.model
        return m.fdt.code_dim if m.head == "fdt" else m.embed_dim


@dataclass
class VisualAssistant:
    """A loaded generative model: ``answer`` questions about images, ``caption`` them, or ``generate``."""

    model: VisionLanguageModel
    tokenizer: TextTokenizer
    transform: ImageTransform
    config: RunConfig
    run_dir: Path
    step: int

    @torch.inference_mode()
    def generate(self, images: Sequence[np.ndarray] | torch.Tensor | None, prompts: Sequence[str],
                 max_new_tokens: int | None = None, temperature: float = 0.0, top_k: int | None = None,
                 seed: int | None = None, batch_size: int = 64) -> list[str]:
        """Continue ``[image, prompt]`` for each prompt (greedy unless ``temperature`` > 0) -> decoded texts.

        images: N arrays ``[C, H, W]`` as stored, an already-transformed [N, C, H, W] tensor, or None
        (text only). Generation stops at EOS or after ``max_new_tokens`` (default: as many as fit).
        """
        if images is not None and len(images) != len(prompts):
            raise VlalignError(f"got {len(images)} images but {len(prompts)} prompts; give one prompt per image")
        device = model_device(self.model)
        generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
        out: list[str] = []
        for i in range(0, len(prompts), batch_size):
            ids, mask = encode_prompts(self.tokenizer, list(prompts[i : i + batch_size]),
                                       self.config.data.context_length)
            pixels = None
            if images is not None:
                chunk = images[i : i + batch_size]
                pixels = chunk if torch.is_tensor(chunk) else self.transform(list(chunk))
            room = self.config.data.context_length + 1 - ids.shape[1]  # the decoder's context after the prefix
            new = self.model.generate(to_device(pixels, device), ids.to(device), mask.to(device),
                                      min(max_new_tokens or room, room), self.tokenizer.eos_id, temperature, top_k,
                                      generator)
            out += [self.tokenizer.decode(_until_eos(row, self.tokenizer.eos_id)) for row in new.tolist()]
        return out

    def answer(self, images: Sequence[np.ndarray] | torch.Tensor, questions: Sequence[str], **kwargs) -> list[str]:
        """One short answer per (image, question)."""
        return self.generate(images, questions, **({"max_new_tokens": ANSWER_TOKENS} | kwargs))

    def caption(self, images: Sequence[np.ndarray] | torch.Tensor, **kwargs) -> list[str]:
        """A caption per image (the stage-1 task: no prompt)."""
        return self.generate(images, [""] * len(images), **kwargs)

    @torch.inference_mode()
    def project_images(self, images: Sequence[np.ndarray] | torch.Tensor) -> torch.Tensor:
        """Connector outputs, the vectors the language model reads: [N, P, D]."""
        pixels = images if torch.is_tensor(images) else self.transform(list(images))
        return self.model.project_images(pixels.to(model_device(self.model)))[0].to(pixels.device)


def _chosen_weights(tensors: dict, checkpoint: Path, weights: str, run_has_ema: bool) -> dict:
    if weights not in WEIGHTS:
        raise VlalignError(f"weights must be one of {', '.join(WEIGHTS)}, got '{weights}'.")
    if weights == "model" or (weights == "auto" and not run_has_ema):
        return tensors
    ema = load_ema(checkpoint)
    if ema is None and weights == "ema":
        raise CheckpointError(f"{checkpoint} has no EMA weights ({EMA_FILE}); train with train.ema_decay > 0, "
                              "or load weights='model'.")
    return tensors if ema is None else ema


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


WEIGHTS = ("auto", "model", "ema")


def load(run_dir: str | Path, checkpoint: str | Path | None = None, weights: str = "auto",
         compile: bool = False, int8: bool = False, device: str | None = None) -> Aligner | VisualAssistant:
    """Load the newest committed checkpoint of ``run_dir`` (or the given ``checkpoint`` directory, an exported
    directory, a Hugging Face CLIP directory, or a checkpoint spec ``hf-clip:DIR`` / ``open-clip:FILE,...``:
    ``vlalign.pretrained``).

    ``weights``: "auto" takes the moving average of the weights when the run trained one
    (``train.ema_decay`` > 0), else the trained weights; "model" always the trained weights; "ema" the
    average (an error if the checkpoint has none). ``int8``: ``Aligner.quantize_int8()`` (CPU inference in
    int8, approximate); ``compile``: ``Aligner.compile()`` the encoders. ``device``: auto | cpu | cuda | cuda:N
    (default: the run's ``train.device``, "auto" unless it was set: CUDA when available)."""
    loaded = _load(run_dir, checkpoint, weights)
    loaded.model.to(resolve_device(device or loaded.config.train.device))
    if int8 and model_device(loaded.model).type != "cpu":
        raise VlalignError("int8=True runs the towers' int8 kernels on the CPU; load with device='cpu'.")
    for flag, name in ((int8, "int8"), (compile, "compile")):
        if flag and not isinstance(loaded, Aligner):
            raise VlalignError(f"{name}=True applies to dual-encoder runs; {run_dir} holds a generative model.")
    if int8:
        loaded.quantize_int8()
    if compile:
        loaded.compile()
    return loaded


def _load(run_dir: str | Path, checkpoint: str | Path | None, weights: str) -> Aligner | VisualAssistant:
    from vlalign.export import is_vlalign_export, load_vlalign_export
    from vlalign.pretrained import HF_CLIP, is_external, is_hf_clip_dir, load_external

    if is_external(run_dir):  # hf-clip:DIR or open-clip:FILE,...
        return load_external(run_dir)
    run_dir = Path(run_dir)
    if checkpoint is None and is_hf_clip_dir(run_dir):  # a CLIPModel directory, e.g. a CLIP-architecture export
        return load_external(HF_CLIP + str(run_dir))
    if checkpoint is None and is_vlalign_export(run_dir):  # `vlalign export --format hf` of another architecture
        return load_vlalign_export(run_dir)
    if (run_dir / "COMMITTED").is_file() and checkpoint is None:  # pointed at a checkpoint directory
        checkpoint, run_dir = run_dir, run_dir.parent.parent
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a vlalign run directory (no config.yaml). "
                              "Pass the directory that `vlalign train --out` wrote.")
    cfg = from_dict(RunConfig, yaml.safe_load(config_path.read_text()), str(config_path))
    checkpoint = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise CheckpointError(f"{run_dir} has no complete checkpoint under checkpoints/. Train it first.")
    tokenizer = TextTokenizer.load(run_dir / "tokenizer.json")
    model = build_model(cfg.model, cfg.data.image_size, tokenizer.vocab_size, cfg.data.context_length)
    tensors, _, state = load_checkpoint(checkpoint)
    model.load_state_dict(_chosen_weights(tensors, checkpoint, weights, cfg.train.ema_decay > 0))
    model.eval()
    transform = ImageTransform.load(run_dir / PREPROCESS_FILE)
    kind = Aligner if isinstance(model, DualEncoder) else VisualAssistant
    return kind(model, tokenizer, transform, cfg, run_dir, state["train_state"]["step"])
