"""Random, offline Hugging Face CLIP checkpoints for the conversion tests: a tiny CLIP BPE vocabulary (CLIP's
layout: 256 byte symbols, the same with the end-of-word marker, merges, then the two special tokens) and a
``CLIPModel`` of a small ``CLIPConfig`` saved with it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("red", "blue", "green", "circle", "square", "star", "small", "large", "a", "photo", "of", "the")
CAPTIONS = ["a red circle", "a photo of the large blue square", "green star!", "small", "a", "the red red star"]


def clip_tokenizer(directory: Path):
    """A CLIP tokenizer whose merges spell ``WORDS``, saved in ``directory``; returns it."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    merges = []
    for word in WORDS:  # merge left to right: r e -> re, re d</w> -> red</w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)))
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def clip_model(directory: Path, vision_act: str = "quick_gelu", text_act: str = "quick_gelu", seed: int = 0,
               image_size: int = 32, patch_size: int = 8, context: int = 16):
    """A random ``CLIPModel`` with its tokenizer and image-processor config in ``directory``; returns the model."""
    from transformers import CLIPConfig, CLIPModel

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_tokenizer(directory)
    text = dict(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=context, hidden_act=text_act,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=patch_size, hidden_act=vision_act)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24,
                                 logit_scale_init_value=3.1)).eval()
    with torch.no_grad():  # HF initialises norms to (1, 0) and biases to 0: make every tensor matter
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(directory))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.25, 0.3],
        "size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}))
    return model


def images(n: int, size: int, seed: int = 1) -> list:
    """n random 8-bit RGB images [3, size, size] (numpy, as vlalign sources store them)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8).numpy() for _ in range(n)]


def hf_embeddings(model, tokenizer_dir: Path, pixels: torch.Tensor, captions: list[str]):
    """(image, text) unit embeddings from the ``CLIPModel`` itself, with its own tokenizer."""
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(str(tokenizer_dir))(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    return out.image_embeds, out.text_embeds
