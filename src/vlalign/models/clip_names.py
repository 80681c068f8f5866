"""Hugging Face ``CLIPModel`` weights <-> vlalign ``DualEncoder`` weights (the same network, other names).

Besides renaming: HF's separate q/k/v projections are vlalign's one ``qkv`` (rows q, k, v, as the
attention's ``view(B, T, 3, heads, hd)`` reads them); the patch convolution [D, C, P, P] is
``patch_embed.proj`` [D, C·P·P] (the patch flattening order is (c, y, x), the convolution's); HF's one
position table [1+N, D] is vlalign's ``cls_pos`` (row 0) and ``patch_embed.pos`` (rows 1..N); the text
embedding table gains a [PAD] row 0 when the tokenizer was shifted in (``id_offset`` 1;
``vlalign.data.clip_tokenizer``). A vlalign patch embedding with a bias exports exactly: the bias is added
to every patch token, as the patch rows of the position table are, so it folds into them.
"""

from __future__ import annotations

import torch

from vlalign.models.clip_arch import ClipArchitecture

Tensors = dict[str, torch.Tensor]

# (HF name, vlalign name) inside one block, each with .weight and .bias
BLOCK_PAIRS = (("layer_norm1", "ln_1"), ("self_attn.out_proj", "attn.proj"), ("layer_norm2", "ln_2"),
               ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"))
QKV = ("q_proj", "k_proj", "v_proj")
TOWERS = (("vision_model", "vision"), ("text_model", "text"))  # (HF prefix, vlalign prefix)


def renames(arch: ClipArchitecture) -> list[tuple[str, str]]:
    """Every (HF name, vlalign name) pair that maps one tensor to one tensor unchanged."""
    pairs = [("vision_model.pre_layrnorm", "vision.ln_pre"), ("vision_model.post_layernorm", "vision.ln_post"),
             ("text_model.final_layer_norm", "text.ln_final")]
    for (hf, vl), depth in zip(TOWERS, (arch.vision.depth, arch.text.depth)):
        pairs += [(f"{hf}.encoder.layers.{i}.{a}", f"{vl}.transformer.blocks.{i}.{b}")
                  for i in range(depth) for a, b in BLOCK_PAIRS]
    out = [(f"{hf}.{p}", f"{vl}.{p}") for hf, vl in pairs for p in ("weight", "bias")]
    heads = [("visual_projection.weight", "image_head.proj.weight"),
             ("text_projection.weight", "text_head.proj.weight")]
    return out + heads + [("logit_scale", "logit_scale")]


def hf_to_vlalign(hf: Tensors, arch: ClipArchitecture, id_offset: int) -> Tensors:
    """HF ``CLIPModel.state_dict()`` -> the vlalign names (all but ``logit_bias``, which CLIP has not)."""
    out = {vl: hf[name] for name, vl in renames(arch)}
    for (prefix, vl), depth in zip(TOWERS, (arch.vision.depth, arch.text.depth)):
        for i in range(depth):
            attn = f"{prefix}.encoder.layers.{i}.self_attn"
            for p in ("weight", "bias"):  # [3D, D] / [3D]: q rows, then k, then v
                out[f"{vl}.transformer.blocks.{i}.attn.qkv.{p}"] = torch.cat([hf[f"{attn}.{q}.{p}"] for q in QKV])
    e = "vision_model.embeddings"
    width = arch.vision.width
    out["vision.cls_token"] = hf[f"{e}.class_embedding"].view(1, 1, width)
    positions = hf[f"{e}.position_embedding.weight"]  # [1+N, D]
    out["vision.cls_pos"] = positions[:1].view(1, 1, width)
    out["vision.patch_embed.pos"] = positions[1:].unsqueeze(0)  # [1, N, D]
    out["vision.patch_embed.proj.weight"] = hf[f"{e}.patch_embedding.weight"].reshape(width, -1)  # [D, C*P*P]
    tokens = hf["text_model.embeddings.token_embedding.weight"]  # [V, D]
    out["text.token_embedding.weight"] = torch.cat([tokens.new_zeros(id_offset, tokens.shape[1]), tokens])
    out["text.pos"] = hf["text_model.embeddings.position_embedding.weight"].unsqueeze(0)  # [1, L, D]
    return {k: v.float().contiguous() for k, v in out.items()}


def vlalign_to_hf(vl: Tensors, arch: ClipArchitecture, id_offset: int) -> Tensors:
    """The inverse of ``hf_to_vlalign``; a patch-embedding bias folds into the patch positions."""
    out = {name: vl[v] for name, v in renames(arch)}
    for (prefix, tower), depth in zip(TOWERS, (arch.vision.depth, arch.text.depth)):
        for i in range(depth):
            attn = f"{prefix}.encoder.layers.{i}.self_attn"
            for p in ("weight", "bias"):
                for q, part in zip(QKV, vl[f"{tower}.transformer.blocks.{i}.attn.qkv.{p}"].chunk(3)):
                    out[f"{attn}.{q}.{p}"] = part
    e, v = "vision_model.embeddings", arch.vision
    patch_pos = vl["vision.patch_embed.pos"][0]  # [N, D]
    if "vision.patch_embed.proj.bias" in vl:
        patch_pos = patch_pos + vl["vision.patch_embed.proj.bias"]
    out[f"{e}.class_embedding"] = vl["vision.cls_token"].view(v.width)
    out[f"{e}.position_embedding.weight"] = torch.cat([vl["vision.cls_pos"].view(1, v.width), patch_pos])
    out[f"{e}.patch_embedding.weight"] = vl["vision.patch_embed.proj.weight"].view(
        v.width, arch.channels, arch.patch_size, arch.patch_size)
    out["text_model.embeddings.token_embedding.weight"] = vl["text.token_embedding.weight"][id_offset:]
    out["text_model.embeddings.position_embedding.weight"] = vl["text.pos"][0]
    return {k: t.contiguous() for k, t in out.items()}
