"""Model merging and weight residuals between runs of one architecture.

- ``interpolate``: ``(1 - α) A + α B``, e.g. an aligned and an instruction-tuned run, or a pretrained and a
  fine-tuned one (weight interpolation: the VL-adaptation-and-safety study merges safety-tuned and
  VL-adapted weights; WiSE-FT, Wortsman et al. 2022, the zero-shot and the fine-tuned model).
- ``add_difference``: ``C + s (B - A)``: the change a tuning made (an "instruction residual", B - A) applied
  to another base C, e.g. a continually pre-trained one, without tuning C again.

``merge_runs`` writes the result as a run directory (config, tokenizer, preprocessing and one committed
checkpoint in the safetensors + JSON format) that ``vlalign.load``, ``vlalign eval`` and
``model.init_from`` read like a trained run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml

from vlalign.checkpoint import load_checkpoint, load_ema, save_checkpoint
from vlalign.config import RunConfig, dump_yaml, from_dict, to_dict
from vlalign.errors import CheckpointError, VlalignError
from vlalign.models.transfer import run_checkpoint

RUN_FILES = ("tokenizer.json", "preprocess.json")  # must be identical across merged runs (same tokens, pixels)


def check_same_architecture(states: dict[str, dict[str, torch.Tensor]]) -> None:
    """A CheckpointError naming the differences unless every state dict has the same names and shapes."""
    (first_name, first), *others = states.items()
    for name, state in others:
        missing, extra = sorted(set(first) - set(state)), sorted(set(state) - set(first))
        shapes = [f"{k} {tuple(first[k].shape)} vs {tuple(state[k].shape)}" for k in sorted(set(first) & set(state))
                  if first[k].shape != state[k].shape]
        if missing or extra or shapes:
            details = "; ".join(filter(None, [
                f"only in {first_name}: {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else "") if missing else "",
                f"only in {name}: {', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else "") if extra else "",
                f"other shapes: {'; '.join(shapes[:3])}" if shapes else ""]))
            raise CheckpointError(f"{first_name} and {name} have different architectures and cannot be merged "
                                  f"({details}). Merge runs of the same model config (sizes, adapters, image size, "
                                  "vocabulary).")


def interpolate(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) a + alpha b`` for every floating-point weight (others are taken from ``a``).
    alpha 0 and 1 return copies of ``a`` and ``b`` bit for bit (the arithmetic would turn -0.0 into 0.0)."""
    check_same_architecture({"A": a, "B": b})
    if alpha == 0:
        return {k: v.clone() for k, v in a.items()}
    if alpha == 1:
        return {k: b[k].clone() for k in a}
    return {k: torch.lerp(v.float(), b[k].float(), alpha).to(v.dtype) if v.is_floating_point() else v.clone()
            for k, v in a.items()}


def add_difference(base: dict[str, torch.Tensor], a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                   scale: float = 1.0) -> dict[str, torch.Tensor]:
    """``base + scale (b - a)`` for every floating-point weight (others are taken from ``base``)."""
    check_same_architecture({"C (the base)": base, "A": a, "B": b})
    return {k: (v.float() + scale * (b[k].float() - a[k].float())).to(v.dtype) if v.is_floating_point()
            else v.clone() for k, v in base.items()}


def load_run_weights(run_dir: str | Path) -> tuple[RunConfig, dict[str, torch.Tensor]]:
    """The run's config and the weights ``vlalign.load`` would use (the moving average when it trained one)."""
    checkpoint = run_checkpoint(run_dir)
    config_path = Path(run_dir) / "config.yaml"
    cfg = from_dict(RunConfig, yaml.safe_load(config_path.read_text()) or {}, str(config_path))
    tensors, _, _ = load_checkpoint(checkpoint)
    ema = load_ema(checkpoint) if cfg.train.ema_decay > 0 else None
    return cfg, tensors if ema is None else ema


def merge_runs(run_a: str | Path, run_b: str | Path, out: str | Path, alpha: float | None = None,
               onto: str | Path | None = None) -> Path:
    """Write ``out``: ``(1 - alpha) A + alpha B`` (alpha default 0.5), or with ``onto`` = C the residual
    ``C + alpha (B - A)`` (alpha default 1). The config and run files come from C, else from A."""
    runs = [Path(run_a), Path(run_b)] + ([Path(onto)] if onto is not None else [])
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise VlalignError(f"{out} exists and is not empty; choose a new --out directory for the merged run.")
    for name in RUN_FILES:
        texts = {str(run): (run / name).read_bytes() if (run / name).is_file() else None for run in runs}
        if len(set(texts.values())) > 1:
            raise CheckpointError(f"{' and '.join(texts)} differ in {name}: their weights read other tokens or "
                                  "pixels and cannot be merged. Merge runs started from one base run.")
    (cfg_a, a), (_, b) = load_run_weights(run_a), load_run_weights(run_b)
    if onto is None:
        alpha = 0.5 if alpha is None else alpha
        cfg, merged, recipe = cfg_a, interpolate(a, b, alpha), {"kind": "interpolate", "alpha": alpha}
    else:
        alpha = 1.0 if alpha is None else alpha
        cfg, base = load_run_weights(onto)
        merged, recipe = add_difference(base, a, b, alpha), {"kind": "add-difference", "scale": alpha, "onto": str(onto)}
    recipe |= {"a": str(run_a), "b": str(run_b)}
    cfg.name = out.name
    cfg.train.ema_decay = 0.0  # the merged weights are the model; there is no average of them
    out.mkdir(parents=True, exist_ok=True)
    source = runs[-1] if onto is not None else runs[0]
    for name in RUN_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    state = {"step": 0, "samples_seen": 0, "skipped_steps": 0, "consecutive_nonfinite": 0}
    save_checkpoint(out / "checkpoints", 0, merged, None, {"train_state": state, "config": to_dict(cfg),
                                                           "merged_from": recipe})
    return out
