"""Linear probe: multinomial logistic regression on frozen image features (CLIP_benchmark's protocol,
Radford et al. 2021 §3.2): the weight decay is picked on a validation split, then the probe is refit
on train+validation and scored once on the test split. Few-shot probes train on k images per class.

Full-batch L-BFGS in float64 on standardised features: the problem is convex and small (N x D with
D <= a few hundred), so it converges to the optimum in well under a second on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlalign.api import Aligner
from vlalign.data.specs import build_source
from vlalign.errors import DataError
from vlalign.eval.tasks import TaskResult, labelled_eval_spec, load_arrays, task
from vlalign.eval.tasks import _shapes_label_sets as shapes_label_sets
from vlalign.eval.zeroshot import classification_metrics

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
SHOTS = (1, 5, 10)


def split_indices(n: int, fractions=(0.6, 0.2, 0.2), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A deterministic shuffle of 0..n-1 cut into train / validation / test index tensors."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int(fractions[0] * n), int(fractions[1] * n)
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def few_shot_indices(labels: torch.Tensor, shots: int, seed: int = 0) -> torch.Tensor:
    """Up to ``shots`` positions per class of ``labels`` [N], drawn deterministically from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in labels.unique().tolist():
        where = (labels == c).nonzero().flatten()
        picked.append(where[torch.randperm(len(where), generator=g)[:shots]])
    return torch.cat(picked).sort().values


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
                 max_iter: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean cross-entropy + ``weight_decay``/2 * ||W||^2 -> (W [D, K], b [K]), float64."""
    # Eval tasks run under inference mode; the fit needs autograd, on ordinary (cloned) tensors.
    with torch.inference_mode(False), torch.enable_grad():
        x, y = features.double().clone(), labels.long().clone()
        W = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ W + b, y) + 0.5 * weight_decay * (W * W).sum()
            loss.backward()
            return loss

        opt.step(closure)
    return W.detach(), b.detach()


class Standardiser:
    """Per-feature zero mean / unit variance, fitted on the training features only."""

    def __init__(self, features: torch.Tensor):
        x = features.double()
        self.mean = x.mean(0)
        self.std = x.std(0, unbiased=False).clamp_min(1e-8) if len(x) > 1 else torch.ones_like(self.mean)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features.double() - self.mean) / self.std


def probe(features: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, val: torch.Tensor, test: torch.Tensor,
          num_classes: int, weight_decays=WEIGHT_DECAYS) -> dict:
    """Pick the weight decay by validation top-1 (ties: the larger decay), refit on train+val, score on test.

    features [N, D]; labels [N] in 0..K-1; train/val/test: index tensors into N.
    """
    if len(train) == 0 or len(val) == 0 or len(test) == 0:
        raise DataError(f"Linear probe needs non-empty train/val/test splits, got {len(train)}/{len(val)}/{len(test)}.")
    labels = labels.long()
    scaler = Standardiser(features[train])
    val_scores = {}
    for wd in weight_decays:
        W, b = fit_logistic(scaler(features[train]), labels[train], num_classes, wd)
        val_scores[wd] = ((scaler(features[val]) @ W + b).argmax(1) == labels[val]).double().mean().item()
    best = max(weight_decays, key=lambda wd: (val_scores[wd], wd))
    fit = torch.cat([train, val])
    scaler = Standardiser(features[fit])
    W, b = fit_logistic(scaler(features[fit]), labels[fit], num_classes, best)
    metrics = classification_metrics((scaler(features[test]) @ W + b).float(), labels[test], num_classes)
    metrics.pop("confusion")
    return {**metrics, "weight_decay": best, "val_top1": val_scores[best], "n_train": len(fit)}


def probe_suite(features: torch.Tensor, labels: torch.Tensor, num_classes: int, shots=SHOTS, seed: int = 0) -> list[dict]:
    """Full-data probe plus k-shot probes on one deterministic train/val/test split.

    A k-shot probe trains on k images per class of the train split and picks its weight decay on
    k per class of the validation split (a few-shot learner has no large validation set either).
    """
    train, val, test = split_indices(len(labels), seed=seed)
    out = [{"shots": "full", **probe(features, labels, train, val, test, num_classes)}]
    for k in shots:
        k_train = train[few_shot_indices(labels[train], k, seed)]
        k_val = val[few_shot_indices(labels[val], k, seed + 1)]
        out.append({"shots": k, **probe(features, labels, k_train, k_val, test, num_classes)})
    return out


@task("linear-probe")
def linear_probe_task(model: Aligner, spec: str | None) -> TaskResult:
    """Logistic-regression probes (full and 1/5/10-shot) on frozen image embeddings; on shapes for the
    shape, colour and shape+colour labels, otherwise for the source's classes."""
    n = model.config.eval.zeroshot_n
    spec = spec or labelled_eval_spec(model)
    source = build_source(spec)
    images, _, labels, samples = load_arrays(source, n)
    features = model.encode_image(images)  # [N, E]
    if hasattr(source, "scene"):
        label_sets = {name: (len(names), labels_) for name, (names, _, labels_) in shapes_label_sets(samples).items()}
    elif source.classes:
        label_sets = {"class": (len(source.classes), labels)}
    else:
        raise DataError(f"The linear probe needs a labelled source; {spec} has no classes.")
    results = []
    for label_set, (num_classes, set_labels) in label_sets.items():
        for row in probe_suite(features, torch.tensor(set_labels), num_classes):
            results.append({"task": "linear-probe", "data": spec, "labels": label_set, **row})
    return TaskResult(results)
