"""VPGTrans: move a trained visual prompt generator (VPG) to another language model (``model.vlm.inherit_vpg``).

VPGTrans (Zhang et al. 2023, arXiv 2305.01278, §4) connects the VPG of a VL-LLM built on a small LLM
to a larger LLM at a fraction of the cost of training it from scratch, in two stages:

1. projector warm-up: inherit the VPG, initialise the new projector (the linear map into the new
   LLM's embedding space) with a *word converter*, and train only the projector, with a large
   learning rate (5x), for a short while;
2. vanilla fine-tuning of VPG and projector together at the normal learning rate.

In vlalign's LLaVA-style pipeline the VPG is the ViT plus the first layer of the mlp connector (with
a fixed ``model.vlm.connector_width`` it does not depend on the LLM), the projector its second layer
``connector.fc2``. The word converter is a linear map fitted by least squares from the old LLM's
token embeddings to the new one's (they share a tokenizer), so the warm-up starts from "the old
projector, read in the new LLM's words": W_new = C·W_old, b_new = C·b_old + c.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from vlalign.checkpoint import load_checkpoint
from vlalign.errors import CheckpointError
from vlalign.models.transfer import run_checkpoint

log = logging.getLogger(__name__)

VPG_PREFIXES = ("vision.", "connector.fc1.")
PROJECTOR = "connector.fc2"


def word_converter(source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares affine map with ``target ≈ source @ A.T + c`` over the rows (tokens).

    source [V, D_s], target [V, D_t] -> A [D_t, D_s], c [D_t]; solved in float64.
    """
    if source.shape[0] != target.shape[0]:
        raise ValueError(f"the word converter pairs embeddings row by row: {source.shape[0]} vs {target.shape[0]} "
                         "tokens; both language models must share one tokenizer")
    design = torch.cat([source.double(), torch.ones(source.shape[0], 1, dtype=torch.float64)], 1)  # [V, D_s+1]
    solution = torch.linalg.lstsq(design, target.double()).solution  # [D_s+1, D_t]
    return solution[:-1].t().to(target.dtype), solution[-1].to(target.dtype)


@torch.no_grad()
def inherit_vpg(model: nn.Module, run_dir: str | Path, projector_init: str, tokenizer_file: Path) -> list[str]:
    """Copy the VPG of ``run_dir`` (a vlm run) into ``model``, and with ``projector_init="word-converter"``
    set the projector to the old one composed with the word converter. -> the names copied.

    ``model``'s decoder must already hold the new LLM's weights (``model.init_from``); ``tokenizer_file``
    is this run's tokenizer, which must be the source run's.
    """
    run_dir = Path(run_dir)
    tensors, _, _ = load_checkpoint(run_checkpoint(run_dir))
    own = model.state_dict()
    vpg = {name: t for name, t in tensors.items() if name.startswith(VPG_PREFIXES)}
    if not vpg:
        raise CheckpointError(f"model.vlm.inherit_vpg: {run_dir} has no VPG (vision.*, connector.fc1.*); "
                              "name a run of model.arch=vlm with the mlp connector.")
    clashes = [f"{n} {tuple(t.shape)} vs {tuple(own[n].shape)}" for n, t in vpg.items()
               if n not in own or own[n].shape != t.shape]
    if clashes:
        raise CheckpointError(f"model.vlm.inherit_vpg: the VPG of {run_dir} does not fit this model: "
                              f"{'; '.join(clashes[:3])}. Use the same vision size, image size and "
                              "model.vlm.connector_width as that run.")
    source_tokenizer = run_dir / tokenizer_file.name
    if source_tokenizer.is_file() and tokenizer_file.is_file() and \
            source_tokenizer.read_text() != tokenizer_file.read_text():
        raise CheckpointError(f"model.vlm.inherit_vpg: {run_dir} has another tokenizer than this run; the VPG's "
                              "language models must share one (train the new LM with the old LM's tokenizer.json).")
    model.load_state_dict(vpg, strict=False)
    copied = sorted(vpg)
    if projector_init == "word-converter":
        converter, shift = word_converter(tensors["decoder.embed_tokens.weight"],
                                          model.decoder.embed_tokens.weight)  # [D_t, D_s], [D_t]
        projector = model.get_submodule(PROJECTOR)
        projector.weight.copy_(converter @ tensors[f"{PROJECTOR}.weight"])  # [D_t, hidden]
        projector.bias.copy_(converter @ tensors[f"{PROJECTOR}.bias"] + shift)
        copied += [f"{PROJECTOR}.weight", f"{PROJECTOR}.bias"]
    log.info("inherited the VPG of %s (%d tensors, projector %s)", run_dir, len(copied), projector_init)
    return copied
