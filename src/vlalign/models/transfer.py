"""Start a model from earlier runs (``model.init_from``): the stages of the generative pipeline.

LLaVA / CG-VLM (METHODS.md §3.4) chain runs: a language model pre-trained on text, a vision tower
from a CLIP run, then stage 1 (alignment) and stage 2 (instruction tuning), each starting from the
previous. A run passes on every module weight whose name and shape match the new model: a CLIP
run's ``vision.*``, a language model's ``decoder.*``, a stage-1 run's everything. Only weights inside
modules move; top-level scalars such as a contrastive temperature belong to their objective and
start afresh. Runs are applied in order, so a later run overrides an earlier one.

An entry may also be an outside CLIP checkpoint (``hf-clip:DIR``, ``open-clip:FILE,...``; see
``vlalign.pretrained``), converted to vlalign's names; its learned temperature (``logit_scale``) comes
with it, as a fine-tuned CLIP keeps the one it was pre-trained with.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml
from torch import nn

from vlalign.checkpoint import latest_checkpoint, load_checkpoint
from vlalign.errors import CheckpointError
from vlalign.models.adapters import base_names

log = logging.getLogger(__name__)

GENERATIVE_ARCHS = ("lm", "vlm")


def run_checkpoint(run_dir: str | Path) -> Path:
    """The newest committed checkpoint of ``run_dir``, or a CheckpointError saying what to train."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"model.init_from: {run_dir} is not a vlalign run directory (no config.yaml). "
                              "Train that stage first, or point model.init_from at its --out directory.")
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise CheckpointError(f"model.init_from: {run_dir} has no complete checkpoint yet; finish training it first.")
    return checkpoint


def _runs(entries: list[str]) -> list[str]:
    """The vlalign run directories among ``model.init_from``'s entries (not outside checkpoints)."""
    from vlalign.pretrained import is_external

    return [entry for entry in entries if not is_external(entry)]


def language_model_source(run_dirs: list[str]) -> Path | None:
    """The last run in ``run_dirs`` that trained a language model: its decoder, hence its tokenizer, is inherited."""
    found = None
    for run_dir in _runs(run_dirs):
        run_checkpoint(run_dir)
        saved = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
        if saved.get("model", {}).get("arch") in GENERATIVE_ARCHS:
            found = Path(run_dir)
    return found


def text_tower_source(run_dirs: list[str], modules: list[str] | tuple[str, ...] = ()) -> Path | None:
    """The last dual-encoder run in ``run_dirs`` whose text tower this model copies (``modules`` empty or
    naming "text"): its token embeddings, hence its tokenizer, are inherited (LanguageBind binds to them)."""
    if modules and "text" not in modules:
        return None
    found = None
    for run_dir in _runs(run_dirs):
        run_checkpoint(run_dir)
        saved = (yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}).get("model", {})
        if saved.get("arch", "dual-encoder") in ("dual-encoder", "text-mlm") \
                and saved.get("text", {}).get("tower", "vlalign") == "vlalign":
            found = Path(run_dir)
    return found


def load_matching_weights(model: nn.Module, run_dirs: list[str], modules: list[str] | tuple[str, ...] = ()
                          ) -> dict[str, str]:
    """Copy matching module weights from each run's newest checkpoint, in order; only those of the
    top-level ``modules`` when given (LiT: a CLIP run's ``vision`` alone, the text tower from scratch).

    Returns {top-level module: the run it came from}. A run with no matching weight, or a weight of
    the same name but another shape (a different size, vocabulary or image size), is an error.
    """
    own = model.state_dict()
    # An adapted model wraps layers (``qkv.base_layer.weight``); an unadapted run saved them plainly.
    plain = base_names(model)
    loaded: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for run_dir in run_dirs:
        tensors, scalars = _weights(run_dir)
        source = {name: name if name in tensors else plain[name] for name in own}  # own name -> saved name
        shared = [name for name in own if source[name] in tensors and ("." in name or scalars)
                  and (not modules or name.split(".")[0] in modules)]
        clashes = [f"{n} {tuple(tensors[source[n]].shape)} vs {tuple(own[n].shape)}" for n in shared
                   if tensors[source[n]].shape != own[n].shape]
        if clashes:
            raise CheckpointError(f"model.init_from: {run_dir} has weights of other shapes than this model: "
                                  f"{'; '.join(clashes[:3])}. Use the same sizes, image size, context length "
                                  "and tokenizer as that run.")
        if not shared:
            raise CheckpointError(f"model.init_from: {run_dir} shares no weight with this model "
                                  f"(its modules: {', '.join(sorted({n.split('.')[0] for n in tensors}))}).")
        for name in shared:
            loaded[name] = tensors[source[name]]
            origin[name.split(".")[0]] = str(run_dir)
    model.load_state_dict(loaded, strict=False)
    for module, run_dir in origin.items():
        log.info("initialised %s from %s", module, run_dir)
    return origin


def _weights(entry: str) -> tuple[dict[str, torch.Tensor], bool]:
    """An ``init_from`` entry's tensors under vlalign's names, and whether its top-level scalars come along."""
    from vlalign.pretrained import converted_weights, is_external, open_checkpoint

    if is_external(entry):
        return converted_weights(open_checkpoint(entry)), True
    return load_checkpoint(run_checkpoint(entry))[0], False
