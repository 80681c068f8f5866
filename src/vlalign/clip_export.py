"""A CLIP-architecture run as a real Hugging Face ``CLIPModel`` directory.

``CLIPModel.save_pretrained`` writes ``config.json`` (``model_type`` "clip") and ``model.safetensors`` under HF's
names (``vlalign.models.clip_names``); beside them the tokenizer and ``preprocessor_config.json``
(``vlalign.hf_files``), so ``CLIPModel.from_pretrained`` and ``CLIPProcessor`` / ``AutoProcessor`` load the
directory, and ``vlalign.load`` reads it back as an ``hf-clip:`` checkpoint. Which runs qualify:
``vlalign.models.clip_arch.clip_blockers``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from vlalign.data.clip_tokenizer import is_shifted_clip
from vlalign.hf_files import token_ids, write_image_processor, write_tokenizer
from vlalign.models.adapters import merge_adapters
from vlalign.models.clip_arch import architecture_of, hf_config
from vlalign.models.clip_names import vlalign_to_hf


def export_clip(aligner, out: Path) -> None:
    """``aligner`` (a run ``clip_blockers`` passes) -> a ``CLIPModel`` directory at ``out``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import CLIPModel

    model = merge_adapters(copy.deepcopy(aligner.model))
    offset = int(is_shifted_clip(aligner.tokenizer))
    arch = architecture_of(aligner.config, aligner.tokenizer.vocab_size - offset)
    ids = token_ids(aligner.tokenizer)
    config = hf_config(arch, model.logit_scale.item(), ids["bos"], ids["eos"], ids["pad"])
    state = {k: v for k, v in model.state_dict().items() if k != "logit_bias"}
    clip = CLIPModel(config)
    clip.load_state_dict(vlalign_to_hf(state, arch, offset), strict=True)
    clip.save_pretrained(str(out))
    write_tokenizer(aligner.tokenizer, out, aligner.config.data.context_length)
    write_image_processor(aligner.transform, out)
