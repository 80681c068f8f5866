"""CMR scaling law: fit loss against mixture ratio and training amount, and solve for the critical ratio.

After Gu et al. 2024 ("CMR Scaling Law: Predicting Critical Mixture Ratios for Continual Pre-training
of Language Models", METHODS.md catalogue #33: a power law in mixture ratio and tokens, solved for the
critical mixture ratio). The exact form fitted here, for the loss of the general (text-only) data
when a share ``r`` of the training batches is general data and ``D`` samples have been seen:

    L(r, D) = a + b · D^(-alpha) + c · r^(-beta)        (r in (0, 1], D > 0)

The ``D`` term is the usual data power law; the ``r`` term grows as the general share shrinks (the
forgetting that continual pre-training on other data causes). The critical mixture ratio at a budget
``D`` is the smallest general share whose predicted loss stays within ``tolerance`` of a reference
``L_ref`` (e.g. the loss before continual training):

    r* = ( c / (L_ref + tolerance - a - b · D^(-alpha)) )^(1/beta)

and ``1 - r*`` is the largest share the new (image-text) data may take.

The fit is variable projection: for fixed exponents the law is linear in (a, b, c), solved by least
squares; the exponents are searched on a log grid, then refined on finer grids around the best.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from vlalign.errors import ConfigError


@dataclass(frozen=True)
class CMRLaw:
    a: float
    b: float
    alpha: float
    c: float
    beta: float
    rmse: float  # of the fit on its points

    def predict(self, ratio, samples):
        """L(r, D) for arrays (or scalars) of ratios in (0, 1] and sample counts > 0."""
        r, d = np.asarray(ratio, dtype=float), np.asarray(samples, dtype=float)
        return self.a + self.b * d ** -self.alpha + self.c * r ** -self.beta

    def critical_ratio(self, samples: float, reference: float, tolerance: float = 0.0) -> float:
        """The smallest general share r* in (0, 1] whose predicted loss at ``samples`` is at most
        ``reference + tolerance``; raises ConfigError when even r = 1 exceeds it."""
        room = reference + tolerance - self.a - self.b * samples ** -self.alpha
        if room <= 0 or (self.c > 0 and self.c / room > 1):  # r* > 1: even all-general data misses the target
            raise ConfigError(f"No mixture ratio keeps the predicted loss within {reference} + {tolerance} at "
                              f"{samples:g} samples (all-general data predicts "
                              f"{float(self.predict(1.0, samples)):.4f}); raise the tolerance or the budget.")
        ratio = (self.c / room) ** (1 / self.beta) if self.c > 0 else 0.0  # c <= 0: the ratio term never hurts
        return float(ratio)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_cmr(ratios, samples, losses, refine: int = 3) -> CMRLaw:
    """Least-squares fit of L(r, D) = a + b·D^-alpha + c·r^-beta to points (r_i, D_i, L_i)."""
    r, d, loss = (np.asarray(x, dtype=float).ravel() for x in (ratios, samples, losses))
    if not len(r) == len(d) == len(loss):
        raise ConfigError(f"fit_cmr needs as many ratios, sample counts and losses; got {len(r)}, {len(d)}, {len(loss)}.")
    if len(r) < 6:
        raise ConfigError(f"fit_cmr fits 5 parameters and needs at least 6 points; got {len(r)}.")
    if np.any(r <= 0) or np.any(r > 1) or np.any(d <= 0):
        raise ConfigError("fit_cmr needs mixture ratios in (0, 1] (a ratio of 0 has infinite predicted loss) "
                          "and positive sample counts.")
    if len(np.unique(r)) < 2 or len(np.unique(d)) < 2:
        raise ConfigError("fit_cmr needs at least two distinct ratios and two distinct sample counts.")
    scale = d.max()  # fit on D / max(D) so the columns are of similar size, then undo it in b
    dn = d / scale
    alphas, betas = np.geomspace(0.01, 4.0, 100), np.geomspace(0.01, 4.0, 100)
    for _ in range(refine + 1):
        best = _grid_fit(r, dn, loss, alphas, betas)
        _, _, alpha, _, beta = best[1]
        alphas = np.geomspace(alpha / _step(alphas), alpha * _step(alphas), 41)
        betas = np.geomspace(beta / _step(betas), beta * _step(betas), 41)
    sse, (a, b_scaled, alpha, c, beta) = best
    return CMRLaw(a=float(a), b=float(b_scaled * scale ** alpha), alpha=float(alpha), c=float(c), beta=float(beta),
                  rmse=float(math.sqrt(sse / len(r))))


def _step(grid: np.ndarray) -> float:
    """The ratio between neighbours of a geometric grid, times 2 (the refined window's half-width)."""
    return float(grid[1] / grid[0]) ** 2


def _grid_fit(r: np.ndarray, dn: np.ndarray, loss: np.ndarray, alphas: np.ndarray,
              betas: np.ndarray) -> tuple[float, tuple]:
    """Best (sse, (a, b, alpha, c, beta)) over the exponent grid, linear least squares inside."""
    A, Bt = np.meshgrid(alphas, betas, indexing="ij")  # [Ga, Gb]
    A, Bt = A.ravel(), Bt.ravel()  # [G]
    design = np.stack([np.ones((len(A), len(r))), dn[None] ** -A[:, None], r[None] ** -Bt[:, None]], axis=-1)  # [G, N, 3]
    gram = design.transpose(0, 2, 1) @ design + 1e-12 * np.eye(3)  # [G, 3, 3]
    coef = np.linalg.solve(gram, (design.transpose(0, 2, 1) @ loss)[..., None])[..., 0]  # [G, 3]
    sse = (((design @ coef[..., None])[..., 0] - loss) ** 2).sum(1)  # [G]
    sse = np.where(np.isfinite(sse), sse, np.inf)
    i = int(np.argmin(sse))
    return float(sse[i]), (coef[i, 0], coef[i, 1], A[i], coef[i, 2], Bt[i])


def points_from_runs(run_dirs: list[str | Path], loss_key: str = "text/heldout_loss",
                     min_step: int = 1) -> tuple[list[float], list[float], list[float]]:
    """(ratios, samples, losses) from mixture runs: ``data.text_ratio`` of each run's config.yaml and
    every metrics.jsonl row (from ``min_step`` on) that logged ``loss_key``, at its ``samples_seen``."""
    ratios, samples, losses = [], [], []
    for run_dir in map(Path, run_dirs):
        config, metrics = run_dir / "config.yaml", run_dir / "metrics.jsonl"
        if not config.is_file() or not metrics.is_file():
            raise ConfigError(f"{run_dir} is not a trained vlalign run (config.yaml and metrics.jsonl are needed).")
        ratio = float((yaml.safe_load(config.read_text()) or {}).get("data", {}).get("text_ratio", 0.0))
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            if loss_key in row and row["step"] >= min_step:
                ratios.append(ratio)
                samples.append(float(row["samples_seen"]))
                losses.append(float(row[loss_key]))
    return ratios, samples, losses


def start_loss(run_dirs: list[str | Path], loss_key: str = "text/heldout_loss") -> float:
    """Mean of the runs' step-0 ``loss_key`` (the language model before the mixture stage changed it)."""
    values = [json.loads(line)[loss_key] for run_dir in map(Path, run_dirs)
              for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["step"] == 0 and loss_key in json.loads(line)]
    if not values:
        raise ConfigError(f"None of {', '.join(map(str, run_dirs))} logged {loss_key} at step 0; pass --reference.")
    return sum(values) / len(values)
