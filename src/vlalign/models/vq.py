"""A small vector-quantised patch tokenizer: the discrete targets of E-ViLM's masked video modelling.

E-ViLM (Fang et al. 2023) predicts, for each masked video region, the label a pre-trained "semantic"
VQ tokenizer gives that region. Here the tokenizer is a VQ-VAE on single ViT patches (van den Oord
et al. 2017): an MLP encodes the P×P×C pixels of a patch to ``z``, the nearest of K codes quantises
it, an MLP decodes the code back to pixels. Trained on frames for a few hundred steps before the
video model (``vlalign.train.vq``), then frozen: each patch's code index is its class for MVM.
Ours learns from pixels only, not from a vision-language teacher as E-ViLM's does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, C*P*P], patches in row-major order (the order of ``PatchEmbed``'s tokens)."""
    B, C, H, W = images.shape
    P = patch_size
    return images.view(B, C, H // P, P, W // P, P).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * P * P)


@dataclass
class VQOutput:
    codes: torch.Tensor  # [B, N] index of each patch's nearest code
    latents: torch.Tensor  # [B, N, d] encoder output z
    quantised: torch.Tensor  # [B, N, d] the chosen codes e (gradients reach the codebook)
    reconstruction: torch.Tensor  # [B, N, C*P*P] decoded from the straight-through z_q
    patches: torch.Tensor  # [B, N, C*P*P] the input pixels, the reconstruction target


def straight_through(latents: torch.Tensor, quantised: torch.Tensor) -> torch.Tensor:
    """z_q = z + sg(e - z): the value of the code e, the gradient of the identity to z (VQ-VAE §3.1)."""
    return latents + (quantised - latents).detach()


class PatchVQTokenizer(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, num_codes: int, code_dim: int = 32, hidden: int = 128):
        super().__init__()
        pixels = in_channels * patch_size**2
        self.patch_size = patch_size
        self.encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.GELU(), nn.Linear(hidden, code_dim))
        self.codebook = nn.Parameter(torch.randn(num_codes, code_dim) * code_dim**-0.5)
        self.decoder = nn.Sequential(nn.Linear(code_dim, hidden), nn.GELU(), nn.Linear(hidden, pixels))

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    def nearest(self, latents: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [...] index of the nearest code (squared Euclidean distance)."""
        flat = latents.reshape(-1, latents.shape[-1])  # [M, d]
        distances = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t()
                     + self.codebook.pow(2).sum(1)[None])  # [M, K]
        return distances.argmin(1).view(latents.shape[:-1])

    def forward(self, images: torch.Tensor) -> VQOutput:
        patches = patchify(images, self.patch_size)  # [B, N, CPP]
        latents = self.encoder(patches)  # [B, N, d]
        codes = self.nearest(latents.detach())
        quantised = self.codebook[codes]  # [B, N, d]
        reconstruction = self.decoder(straight_through(latents, quantised))
        return VQOutput(codes, latents, quantised, reconstruction, patches)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, N] code of every patch."""
        return self.nearest(self.encoder(patchify(images, self.patch_size)))

    @torch.no_grad()
    def init_codebook(self, images: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Start the codes at encoder outputs of distinct random patches of ``images`` (data-dependent
        initialisation: random codes far from every latent are never chosen and never learn)."""
        latents = self.encoder(patchify(images, self.patch_size)).reshape(-1, self.codebook.shape[1])  # [M, d]
        if latents.shape[0] < self.num_codes:
            raise ValueError(f"{latents.shape[0]} patches cannot initialise {self.num_codes} codes; "
                             "give more frames")
        pick = torch.randperm(latents.shape[0], generator=generator)[: self.num_codes]
        self.codebook.copy_(latents[pick])
