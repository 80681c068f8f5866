"""Prototypical contrastive learning: k-means prototypes of the text embeddings as extra positives.

ProtoNCE (Li et al. 2021, "Prototypical Contrastive Learning of Unsupervised Representations", §3.2,
Eq. 11-12), the loss MeDSLIP applies per stream (Fan et al. 2024, "MeDSLIP", §3.3, ProtoCL). The
texts of the (global) batch are clustered with spherical k-means; each image is pulled towards the
prototype of its own text's cluster and pushed from the other prototypes:

    L_proto = 1/M Σ_m  CE( s · v·c^m_j / φ^m_j ,  cluster of the image's text in clustering m )

over M clusterings with different k. φ_j is the cluster's concentration (Eq. 12): the mean distance
of its members to the prototype over log(Z + α), α = 10, so a loose cluster gets a softer
distribution. As the reference code, singletons take the largest φ, φ is clipped to its 10th-90th
percentiles and rescaled to mean 1 here (the reference rescales to mean τ; the model's logit scale s
plays τ's part). Prototypes and φ are fixed targets (no gradient), as PCL's momentum features are.

As PCL (which trains 20 of 200 epochs with InfoNCE alone), the term joins after a warm-up
(``objective.medslip.proto_warmup_steps``): clusters of an untrained encoder's embeddings are noise, and
pulling images towards them from step 0 stalled CLIP's own loss at ln(batch) for 50 steps here.

Differences from the papers, on purpose: PCL clusters the whole dataset once per epoch with a
momentum encoder; here each step's global batch is clustered, which needs no memory bank and keeps a
step a pure function of its batch. MeDSLIP's ProtoCL prototype is the mean embedding of the entities
that co-occur with a query; k-means prototypes are the PCL form the catalogue asks for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign import dist

ALPHA = 10.0  # PCL's smoothing of the concentration for small clusters


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, k: int, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster unit-norm rows x [N, E] by cosine -> (prototypes [k', E] unit-norm, assignment [N]), k' = min(k, N).

    Deterministic: the first prototype is x[0], each next one the row least similar to those chosen
    (farthest-point seeding); then Lloyd steps. An emptied cluster keeps its previous prototype.
    """
    k = min(k, x.shape[0])
    chosen = [0]
    best = x @ x[0]  # [N] similarity of each row to its closest chosen prototype
    for _ in range(1, k):
        nxt = int(best.argmin())
        chosen.append(nxt)
        best = torch.maximum(best, x @ x[nxt])
    prototypes = x[chosen].clone()
    for _ in range(iters):
        assign = (x @ prototypes.t()).argmax(1)  # [N]
        sums = torch.zeros_like(prototypes).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        prototypes[filled] = F.normalize(sums[filled], dim=-1)
    return prototypes, (x @ prototypes.t()).argmax(1)


@torch.no_grad()
def concentration(x: torch.Tensor, prototypes: torch.Tensor, assign: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """φ [k] (PCL Eq. 12): mean ||x − c|| of each cluster's members over log(Z + α); singletons (and empty
    clusters) take the largest φ of the others; clipped to the 10th-90th percentiles; rescaled to mean 1."""
    k = prototypes.shape[0]
    distance = (x - prototypes[assign]).norm(dim=-1)  # [N]
    counts = torch.bincount(assign, minlength=k).to(x.dtype)
    sums = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, assign, distance)
    several = counts > 1
    if not bool(several.any()):  # every cluster a singleton: no spread to measure
        return torch.ones(k, dtype=x.dtype, device=x.device)
    phi = torch.zeros(k, dtype=x.dtype, device=x.device)
    phi[several] = sums[several] / counts[several] / torch.log(counts[several] + alpha)
    phi[~several] = phi[several].max()
    phi = phi.clamp(torch.quantile(phi, 0.1), torch.quantile(phi, 0.9))
    phi = phi.clamp_min(1e-6)  # a cluster of identical texts has no spread
    return phi / phi.mean()


def proto_nce_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, num_prototypes: list[int],
                   iters: int = 10) -> torch.Tensor:
    """image, text [B, E] unit-norm pairs -> ProtoNCE of the images against k-means prototypes of the texts,
    averaged over the clusterings ``num_prototypes`` (the global batch is clustered on every rank alike)."""
    all_image = dist.gather_with_grad(image)  # [N, E]
    all_text = dist.gather_with_grad(text).detach()
    losses = []
    for k in num_prototypes:
        prototypes, assign = spherical_kmeans(all_text, k, iters)
        phi = concentration(all_text, prototypes, assign)
        logits = logit_scale * (all_image @ prototypes.t()) / phi[None, :]  # [N, k]
        losses.append(F.cross_entropy(logits, assign))
    return torch.stack(losses).mean()
