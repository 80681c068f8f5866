"""An open_clip ``CLIP`` state dict (ViT image tower) -> Hugging Face ``CLIPModel`` names and its architecture.

open_clip keeps OpenAI's names: ``visual.conv1`` (bias-free patch convolution), ``visual.class_embedding``,
``visual.positional_embedding`` [1+N, D], ``visual.ln_pre``, ``visual.transformer.resblocks.i`` (``ln_1``,
``attn.in_proj_weight`` [3D, D] with rows q, k, v, ``attn.out_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``),
``visual.ln_post``, ``visual.proj`` [D, E] (applied as ``x @ proj``), and for text ``token_embedding``,
``positional_embedding`` [L, D], ``transformer.resblocks.i``, ``ln_final``, ``text_projection`` [D, E] and
``logit_scale``. A state dict records neither the head count nor the MLP activation: open_clip's configs use
64-wide heads, and the activation (QuickGELU for OpenAI's weights and the ``-quickgelu`` models, GELU
otherwise) must be named by the caller.
"""

from __future__ import annotations

import re

import torch

from vlalign.errors import CheckpointError
from vlalign.models.clip_arch import ClipArchitecture, ClipTower

Tensors = dict[str, torch.Tensor]

HEAD_WIDTH = 64  # open_clip's default width per attention head (vision_cfg.head_width; text heads = width / 64)
BLOCK_RENAMES = (("ln_1", "layer_norm1"), ("attn.out_proj", "self_attn.out_proj"), ("ln_2", "layer_norm2"),
                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
TOWERS = (("visual.transformer", "vision_model.encoder"), ("transformer", "text_model.encoder"))
IGNORED = ("attn_mask",)  # a buffer some open_clip versions saved; rebuilt from the architecture


def unwrap(loaded: dict) -> Tensors:
    """The model's tensors from what ``torch.load`` returned: a training checkpoint's ``state_dict``, DDP's
    ``module.`` prefix removed."""
    state = loaded.get("state_dict", loaded)
    state = {name.removeprefix("module."): t for name, t in state.items()}
    return {name: t for name, t in state.items() if name not in IGNORED}


def depth(state: Tensors, prefix: str) -> int:
    pattern = re.compile(rf"{re.escape(prefix)}\.resblocks\.(\d+)\.")
    found = {int(m.group(1)) for name in state if (m := pattern.match(name))}
    if not found:
        raise CheckpointError(f"this is not an open_clip ViT CLIP state dict: no {prefix}.resblocks.* weights.")
    return max(found) + 1


def architecture(state: Tensors, activation: str, vision_heads: int = 0, text_heads: int = 0) -> ClipArchitecture:
    """The architecture the tensors' shapes give; heads default to open_clip's 64-wide heads."""
    missing = [n for n in ("visual.conv1.weight", "visual.positional_embedding", "visual.proj",
                           "token_embedding.weight", "positional_embedding", "text_projection", "logit_scale")
               if n not in state]
    if missing:
        raise CheckpointError(f"this is not an open_clip ViT CLIP state dict: it lacks {', '.join(missing)}.")
    conv = state["visual.conv1.weight"]  # [D, C, P, P]
    width, channels, patch = conv.shape[0], conv.shape[1], conv.shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vocab, text_width = state["token_embedding.weight"].shape
    towers = []
    for prefix, w, heads in (("visual.transformer", width, vision_heads), ("transformer", text_width, text_heads)):
        mlp = state[f"{prefix}.resblocks.0.mlp.c_fc.weight"].shape[0]
        towers.append(ClipTower(w, depth(state, prefix), heads or w // HEAD_WIDTH, mlp, activation))
    return ClipArchitecture(vision=towers[0], text=towers[1], image_size=grid * patch, patch_size=patch,
                            channels=channels, vocab_size=vocab, context_length=state["positional_embedding"].shape[0],
                            embed_dim=state["visual.proj"].shape[1])


def to_hf(state: Tensors, arch: ClipArchitecture) -> Tensors:
    """open_clip names -> ``CLIPModel`` names. A tensor left over (layer scale, attention pooling, a SigLIP bias:
    architectures CLIPModel does not have) is a CheckpointError, not silently dropped."""
    state = dict(state)
    out = {}

    def move(src: str, dst: str) -> None:
        out[dst] = state.pop(src)

    for (oc, hf), blocks in zip(TOWERS, (arch.vision.depth, arch.text.depth)):
        for i in range(blocks):
            a, b = f"{oc}.resblocks.{i}", f"{hf}.layers.{i}"
            for old, new in BLOCK_RENAMES:
                for p in ("weight", "bias"):
                    move(f"{a}.{old}.{p}", f"{b}.{new}.{p}")
            for p in ("weight", "bias"):
                for name, part in zip(("q_proj", "k_proj", "v_proj"), state.pop(f"{a}.attn.in_proj_{p}").chunk(3)):
                    out[f"{b}.self_attn.{name}.{p}"] = part
    for old, new in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                     ("ln_final", "text_model.final_layer_norm")):
        for p in ("weight", "bias"):
            move(f"{old}.{p}", f"{new}.{p}")
    move("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight")
    move("visual.class_embedding", "vision_model.embeddings.class_embedding")
    move("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight")
    move("token_embedding.weight", "text_model.embeddings.token_embedding.weight")
    move("positional_embedding", "text_model.embeddings.position_embedding.weight")
    move("logit_scale", "logit_scale")
    out["visual_projection.weight"] = state.pop("visual.proj").T  # x @ proj == Linear with weight proj.T
    out["text_projection.weight"] = state.pop("text_projection").T
    if state:
        raise CheckpointError("this open_clip state dict has weights a CLIP ViT has not: "
                              f"{', '.join(sorted(state)[:5])}"
                              " (layer scale, attention pooling or a text projection bias); vlalign converts "
                              "plain ViT CLIP models.")
    return out
