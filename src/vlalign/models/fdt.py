"""FDT: Finite Discrete Tokens (Chen et al., CVPR 2023, arXiv 2303.14865; METHODS.md §2).

Image patch tokens and text tokens are both grounded to one shared, learned codebook. Each modality
has its own query network; a token-to-code score matrix is pooled over tokens, sparsemax turns the
pooled scores into sparse code weights, and the FDT feature is the L2-normalised weighted sum of codes:

    q = Linear(LN(GELU(Linear(LN(tokens)))))        # [B, T, D_code]   (§2.1)
    s = q @ codes.T / sqrt(D_code) / temperature     # [B, T, K]        (§2.2 steps 1-3)
    a = pool_T(s)                                    # [B, K]           (§2.2 step 4)
    w = sparsemax(a)                                 # [B, K]           (§2.2 step 5)
    f = normalize(w @ codes)                         # [B, D_code]      (§2.2 step 6)

The contrastive loss on f lives in `vlalign.objectives`, not here.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlalign.models.sparsemax import sparsemax

POOLS = ("max", "mean", "sum")
ACTIVATIONS = ("sparsemax", "softmax")
PAD_MODES = ("neg_inf", "zero")

# Default score temperature for small models (the reference's 1000, §2.2, is for ViT-B and K=16384).
# Sparsemax is not scale-invariant: its active set is decided by absolute score gaps against the "sum
# to 1" budget, so the temperature sets how far one optimiser step moves the scores in sparsemax units.
# Measured on a toy paired-token InfoNCE (B=64, 16 tokens, D_code=128, Adam lr 1e-3, 400-600 steps):
#   temperature <= 3:  < 2% of K=1024 codes active at init; one to three codes take over (T=1: 7 -> 1.2
#                      active per sample, 3 used in the batch) and the loss stays at chance (ln 64).
#   temperature 10:    5% active at init; learns, but slowly (loss 3.7 after 200 steps, 0.64 at T=30).
#   temperature 30:    trains for K = 256, 1024, 4096 and 16384; active codes per sample go from 110/256,
#                      140/1024, 160/4096, 180/16384 at init to about 55, 60, 75, 90 after training.
#   temperature 100+:  trains too, but stays dense (K=1024: 257 active at T=100, 640 at T=300).
#   temperature 1000:  fully dense for K <= 1024 (every code active).
# At init the active fraction depends on K / temperature, hardly on code_dim or the number of tokens.
# Not learnable: the last query Linear already learns the scale of the scores.
DEFAULT_TEMPERATURE = 30.0


@dataclass
class FDTOutput:
    embedding: Tensor  # [B, D_code] L2-normalised weighted sum of codes
    weights: Tensor  # [B, K] code weights: non-negative, sum to 1 (sparse under sparsemax)
    scores: Tensor  # [B, K] pooled grounding scores, before the activation


class FDTCodebook(nn.Module):
    """The finite discrete tokens: K learned code vectors shared by image and text (§2.1).

    Codes are both the keys the queries are scored against and the values that are summed, with no
    projection in between. Initialised as `randn` like the reference, left unscaled on purpose: with
    unit-variance entries, q.c/sqrt(D_code) has the same scale as the entries of q (the usual attention
    scaling argument), and the FDT feature is L2-normalised, so the code norm never reaches the output.
    """

    def __init__(self, num_codes: int = 1024, code_dim: int = 128):
        super().__init__()
        if num_codes < 1 or code_dim < 1:
            raise ValueError(f"FDTCodebook needs num_codes >= 1 and code_dim >= 1, got {num_codes} and {code_dim}.")
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.codes = nn.Parameter(torch.randn(num_codes, code_dim))  # [K, D_code]


class FDTGrounding(nn.Module):
    """Grounds one modality's tokens to the shared codebook and returns its FDT feature (§2.2).

    Build one per modality, all pointing at the same `FDTCodebook`. The codebook is then a submodule of
    each grounding (tied weights): a parent's `parameters()` yields it once, but `state_dict()` lists it
    under every grounding, so checkpoints need a tied-weight-aware writer (e.g. safetensors `save_model`).

    pad_mode says what padded tokens (mask False) do in the pool:
      - "neg_inf" (default): they are excluded. For max pooling their scores are set to -inf, so the max
        is taken over real tokens only; "mean" divides by the number of real tokens; "sum" skips them.
        Appending padding therefore never changes the feature.
      - "zero": the reference behaviour (§2.2 step 2). Padded scores are multiplied by 0, so under max
        pooling every code's pooled score is at least 0 whenever a sample has padding, and "mean"
        divides by the padded length. The feature then depends on how much padding the batch has.
    """

    def __init__(
        self,
        token_dim: int,
        codebook: FDTCodebook,
        hidden_dim: int | None = None,
        pool: str = "max",
        activation: str = "sparsemax",
        temperature: float = DEFAULT_TEMPERATURE,
        pad_mode: str = "neg_inf",
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"FDTGrounding pool={pool!r} is not supported; choose one of {POOLS}.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"FDTGrounding activation={activation!r} is not supported; choose one of {ACTIVATIONS}.")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"FDTGrounding pad_mode={pad_mode!r} is not supported; choose one of {PAD_MODES}.")
        if not temperature > 0:
            raise ValueError(f"FDTGrounding temperature must be > 0, got {temperature}.")
        code_dim = codebook.code_dim
        # The reference's hidden width equals the code width (512 -> 512, §2.1).
        hidden_dim = code_dim if hidden_dim is None else hidden_dim
        self.token_dim = token_dim
        self.codebook = codebook
        self.pool = pool
        self.activation = activation
        # A plain attribute, so a schedule may anneal it (the reference's T decay, §2.2).
        self.temperature = float(temperature)
        self.pad_mode = pad_mode
        self.query = nn.Sequential(
            nn.LayerNorm(token_dim),
            nn.Linear(token_dim, hidden_dim),
            nn.GELU(),
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, code_dim),
        )

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> FDTOutput:
        """tokens [B, T, token_dim]; mask [B, T] bool, True = real token (None = all real)."""
        self._check_inputs(tokens, mask)
        codes = self.codebook.codes  # [K, D_code]
        if mask is not None:
            # Zero padded tokens before the query net too: their scores are discarded either way, and a
            # non-finite pad value would otherwise turn the codebook's gradient into NaN (0 * inf).
            tokens = tokens.masked_fill(~mask.unsqueeze(-1), 0.0)
        token_scores = self.token_scores(tokens)  # [B, T, K]
        scores = self._pool(token_scores, mask)  # [B, K]
        weights = sparsemax(scores, dim=-1) if self.activation == "sparsemax" else scores.softmax(dim=-1)  # [B, K]
        embedding = F.normalize(weights @ codes, dim=-1)  # [B, D_code]
        return FDTOutput(embedding=embedding, weights=weights, scores=scores)

    def token_scores(self, tokens: Tensor) -> Tensor:
        """Grounding score of every token for every code, before pooling: [B, T, token_dim] -> [B, T, K]."""
        codes = self.codebook.codes  # [K, D_code]
        queries = self.query(tokens)  # [B, T, D_code]
        return queries @ codes.t() / (math.sqrt(codes.shape[1]) * self.temperature)

    def _pool(self, token_scores: Tensor, mask: Tensor | None) -> Tensor:
        """Pool [B, T, K] token scores over T into [B, K], honouring pad_mode."""
        if mask is not None and self.pad_mode == "zero":
            # Reference: multiplicative mask, then pool over all T positions as if they were real.
            token_scores = token_scores * mask.unsqueeze(-1).to(token_scores.dtype)
            mask = None
        if mask is None:
            if self.pool == "max":
                return token_scores.amax(dim=1)
            return token_scores.mean(dim=1) if self.pool == "mean" else token_scores.sum(dim=1)
        padded = ~mask.unsqueeze(-1)  # [B, T, 1]
        if self.pool == "max":
            return token_scores.masked_fill(padded, float("-inf")).amax(dim=1)
        summed = token_scores.masked_fill(padded, 0.0).sum(dim=1)  # [B, K]
        if self.pool == "sum":
            return summed
        num_real = mask.sum(dim=1, keepdim=True).to(token_scores.dtype)  # [B, 1]
        return summed / num_real

    def _check_inputs(self, tokens: Tensor, mask: Tensor | None) -> None:
        if tokens.dim() != 3 or tokens.shape[-1] != self.token_dim:
            raise ValueError(
                f"FDTGrounding expects tokens of shape [B, T, {self.token_dim}], got {tuple(tokens.shape)}."
            )
        if tokens.shape[1] == 0:
            raise ValueError("FDTGrounding got zero tokens per sample (T=0); each sample needs at least one token.")
        if mask is None:
            return
        if mask.dtype != torch.bool or mask.shape != tokens.shape[:2]:
            raise ValueError(
                f"FDTGrounding expects a bool mask of shape {tuple(tokens.shape[:2])} (True = real token), "
                f"got dtype {mask.dtype} and shape {tuple(mask.shape)}."
            )
        empty = (~mask.any(dim=1)).nonzero().flatten()
        if empty.numel() > 0:
            raise ValueError(
                f"FDTGrounding got samples with no real tokens (mask all False) at batch indices "
                f"{empty.tolist()[:8]}; drop them or give each at least one token."
            )


def code_usage_stats(image_weights: Tensor, text_weights: Tensor) -> dict[str, float]:
    """Sparsity diagnostics for matched image/text code weights [B, K] (METHODS.md §2.5).

    A code is active for a sample when its weight is > 0. Returns the mean number of active codes per
    sample, the number of codes active for at least one sample of the batch (per modality), and the mean
    Jaccard overlap |A_i & B_i| / |A_i | B_i| of the active sets of matched pairs (image i, text i).
    """
    if image_weights.dim() != 2 or image_weights.shape != text_weights.shape:
        raise ValueError(
            f"code_usage_stats expects image and text weights of the same shape [B, K], got "
            f"{tuple(image_weights.shape)} and {tuple(text_weights.shape)}."
        )
    image_active = image_weights.detach() > 0  # [B, K]
    text_active = text_weights.detach() > 0  # [B, K]
    intersection = (image_active & text_active).sum(dim=1)  # [B]
    # The union is never empty: weights sum to 1, so each sample has at least one active code.
    union = (image_active | text_active).sum(dim=1).clamp(min=1)  # [B]
    return {
        "fdt/active_codes_image": image_active.sum(dim=1).float().mean().item(),
        "fdt/active_codes_text": text_active.sum(dim=1).float().mean().item(),
        "fdt/used_codes_image": float(image_active.any(dim=0).sum().item()),
        "fdt/used_codes_text": float(text_active.any(dim=0).sum().item()),
        "fdt/overlap": (intersection.float() / union.float()).mean().item(),
    }
