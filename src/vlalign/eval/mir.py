"""MIR, the Modality Integration Rate (Huang et al. 2024, arXiv 2410.07167, §3): how far apart image
tokens and text tokens sit inside a language model, layer by layer.

Per layer: scale both token sets by 1 / (mean L2 norm of the text tokens) ("text-centric
normalisation"), replace every token whose norm is more than 3 standard deviations from the median
norm by the per-dimension median token (outlier removal, per modality), then take the Fréchet
distance between the two sets as Gaussians. MIR = log10 of the sum over layers; lower = better
integrated. The reference skips the embedding layer (hidden state 0), as ``decoder_mir`` does.

For a dual encoder there is no shared language model, so ``dual_encoder_mir`` adapts the metric:
layer i of the vision tower is paired with layer i of the text tower, and both token sets are read
into the shared embedding space through the tower's own final norm and projection head (a "logit
lens": the towers' widths may differ, the embedding space is where they are meant to meet).
"""

from __future__ import annotations

import math

import torch

from vlalign.api import Aligner
from vlalign.data.specs import build_source
from vlalign.errors import DataError
from vlalign.eval.tasks import TaskResult, load_arrays, task


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to x [N, D] and y [M, D], in float64:
    ||mu_x - mu_y||^2 + tr(S_x) + tr(S_y) - 2 tr((S_x^1/2 S_y S_x^1/2)^1/2).

    The cross term uses symmetric eigendecompositions only (S_x^1/2 S_y S_x^1/2 is symmetric PSD and
    has the same eigenvalues as S_x S_y), which is exact and stable where Newton-Schulz or a
    general sqrtm can return complex noise.
    """
    x, y = x.double(), y.double()
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = torch.cov(x.t()), torch.cov(y.t())  # [D, D], unbiased like the reference
    vals, vecs = torch.linalg.eigh(cov_x)
    sqrt_x = (vecs * vals.clamp_min(0).sqrt()) @ vecs.t()
    middle = sqrt_x @ cov_y @ sqrt_x
    cross = torch.linalg.eigvalsh((middle + middle.t()) / 2).clamp_min(0).sqrt().sum()
    distance = (mu_x - mu_y).square().sum() + cov_x.trace() + cov_y.trace() - 2 * cross
    return max(distance.item(), 0.0)


def replace_outliers(tokens: torch.Tensor, sigmas: float = 3.0) -> torch.Tensor:
    """tokens [N, D] -> a copy where tokens with | ||t|| - median norm | > sigmas * std(norms) are the median token."""
    norms = tokens.norm(dim=-1)  # [N]
    outlier = (norms - norms.median()).abs() > sigmas * norms.std()
    out = tokens.clone()
    out[outlier] = tokens.median(dim=0).values
    return out


def modality_integration_rate(image_hidden: list[torch.Tensor], text_hidden: list[torch.Tensor]) -> dict:
    """image_hidden, text_hidden: per layer [N_img, D] and [N_txt, D] token sets (padding removed).

    Returns {"mir": log10 of the summed distance, "fd_sum", "per_layer": [distances]}.
    """
    if len(image_hidden) != len(text_hidden) or not image_hidden:
        raise ValueError(f"MIR needs the same non-zero number of layers per modality, got {len(image_hidden)} "
                         f"image and {len(text_hidden)} text layers")
    per_layer = []
    for image, text in zip(image_hidden, text_hidden):
        scale = 1.0 / text.double().norm(dim=-1).mean()
        per_layer.append(frechet_distance(replace_outliers(image.double() * scale),
                                          replace_outliers(text.double() * scale)))
    total = sum(per_layer)
    return {"mir": math.log10(total) if total > 0 else float("-inf"), "fd_sum": total, "per_layer": per_layer}


def split_prefix_hidden_states(hidden_states, prefix_len: int, text_mask: torch.Tensor | None = None):
    """A decoder's hidden states over [image prefix, text tokens] -> (image tokens, text tokens) per layer,
    each [tokens in the batch, D], skipping the embedding output (layer 0).

    hidden_states: per layer [B, P+L, D]; text_mask [B, L] bool (True = real token) or None.
    """
    image, text = [], []
    for h in hidden_states[1:]:
        image.append(h[:, :prefix_len].reshape(-1, h.shape[-1]))
        words = h[:, prefix_len:]  # [B, L, D]
        text.append(words.reshape(-1, h.shape[-1]) if text_mask is None else words[text_mask])
    return image, text


def decoder_mir(hidden_states, prefix_len: int, text_mask: torch.Tensor | None = None) -> dict:
    """MIR of a prefix-LM (image tokens as a prefix of the text, e.g. ``CausalDecoder(ids, prefix=...)``)."""
    return modality_integration_rate(*split_prefix_hidden_states(hidden_states, prefix_len, text_mask))


def dual_encoder_hidden(model: Aligner, images, captions: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per paired layer, the vision patch tokens and the real text tokens read into the embedding space."""
    net = model.model
    for head in (net.image_head, net.text_head):
        if not hasattr(head, "proj"):
            raise DataError(f"The dual-encoder MIR reads tokens through a linear head; {type(head).__name__} has "
                            "no .proj. Use a run with the default PooledProjection head.")
    vision = net.vision(model.transform(images).to(model.device))
    ids, mask = model.tokenizer(captions, model.config.data.context_length)
    text = net.text(ids.to(model.device), mask.to(model.device))
    layers = min(len(vision.intermediates), len(text.intermediates))
    image_hidden, text_hidden = [], []
    for i in range(layers):
        v = net.image_head.proj(net.vision.ln_post(vision.intermediates[i][:, 1:]))  # [B, T, E], CLS dropped
        t = net.text_head.proj(net.text.ln_final(text.intermediates[i]))  # [B, L, E]
        image_hidden.append(v.reshape(-1, v.shape[-1]).to(mask.device))
        text_hidden.append(t.to(mask.device)[mask])
    return image_hidden, text_hidden


@task("mir")
def mir(model: Aligner, spec: str | None) -> TaskResult:
    """Modality Integration Rate, dual-encoder adaptation (layer i vs layer i, read through the heads)."""
    spec = spec or model.config.data.eval
    images, captions, _, _ = load_arrays(build_source(spec), min(256, model.config.eval.retrieval_n))
    out = modality_integration_rate(*dual_encoder_hidden(model, images, captions))
    return TaskResult([{"task": "mir", "data": spec, "variant": "dual-encoder, embedding-space lens", **out}])
