"""The files beside exported weights that Hugging Face's tokenizer and image-processor classes read
(``AutoTokenizer``, ``AutoImageProcessor``, ``CLIPProcessor`` / ``AutoProcessor``)."""

from __future__ import annotations

import json
from pathlib import Path

from vlalign.data.clip_tokenizer import EOT, is_shifted_clip, shift_out
from vlalign.data.tokenizer import BOS_NAMES, TextTokenizer
from vlalign.data.transforms import ImageTransform

SOT = BOS_NAMES[-1]  # CLIP's start-of-text token


def token_ids(tokenizer: TextTokenizer) -> dict[str, int]:
    """bos / eos / pad ids as the exported tokenizer numbers them (CLIP's own for a shifted-in CLIP vocabulary,
    which pads with its end-of-text token as Hugging Face's CLIP tokenizers do)."""
    if is_shifted_clip(tokenizer):
        return {"bos": tokenizer.bos_id - 1, "eos": tokenizer.eos_id - 1, "pad": tokenizer.eos_id - 1}
    return {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id}


def write_tokenizer(tokenizer: TextTokenizer, out: Path, context_length: int) -> None:
    """``tokenizer.json`` and ``tokenizer_config.json``: a shifted-in CLIP vocabulary back in CLIP's numbering as a
    ``CLIPTokenizer``; a run's own vocabulary as a ``PreTrainedTokenizerFast`` (its BOS/EOS template included)."""
    if is_shifted_clip(tokenizer):
        shift_out(tokenizer).save(str(out / "tokenizer.json"))
        tokens = {"tokenizer_class": "CLIPTokenizer", "bos_token": SOT, "eos_token": EOT, "unk_token": EOT,
                  "pad_token": EOT}
    else:
        tokenizer.save(out / "tokenizer.json")
        name = tokenizer.tokenizer.id_to_token
        tokens = {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": name(tokenizer.pad_id),
                  "bos_token": name(tokenizer.bos_id), "eos_token": name(tokenizer.eos_id)}
    config = tokens | {"model_max_length": context_length, "padding_side": "right"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


def write_image_processor(transform: ImageTransform, out: Path) -> None:
    """``preprocessor_config.json`` for ``CLIPImageProcessor`` (8-bit RGB): bilinear resize of the short side and a
    centre crop to the model's size (for a square image, vlalign's own resize), x / 255, then the run's per-channel
    normalisation (vlalign's default (x / 255 - 0.5) / 0.5 when it has none)."""
    if transform.mean is None:
        mean, std = [0.5] * transform.in_channels, [0.5] * transform.in_channels
    else:  # ImageTransform keeps statistics in stored (0-255) units
        mean, std = [m / 255 for m in transform.mean], [s / 255 for s in transform.std]
    size = transform.image_size
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
        "do_resize": True, "size": {"shortest_edge": size}, "resample": 2, "do_center_crop": True,
        "crop_size": {"height": size, "width": size}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": mean, "image_std": std, "do_convert_rgb": True}, indent=1))
