"""One optimizer step: forward and backward (GradCache-accumulated when asked), the non-finite guard
on every rank together, clipping, the update and the logit-scale clamp.

A step either applies completely or leaves weights, optimizer state, learning rate and counters
exactly as they were (non-finite loss or gradient norm on any rank).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from vlalign import dist
from vlalign.config import RunConfig
from vlalign.errors import NonFiniteError, OutOfMemory
from vlalign.models.adapters import shrink_rank_importance
from vlalign.models.dual_encoder import AlignmentOutput
from vlalign.train.optim import clip_gradients, global_norm, lr_at, set_lr
from vlalign.train.precision import autocast, outputs_in_fp32

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Counters saved with every checkpoint."""

    step: int = 0  # optimizer steps taken
    samples_seen: int = 0
    skipped_steps: int = 0  # non-finite steps skipped under nonfinite_policy="skip"
    consecutive_nonfinite: int = 0


def batch_size(batch: dict) -> int:
    """Samples in a batch; every batch has text, text-only ones (language-model pre-training) no images."""
    return batch["text_ids"].shape[0]


# Optional keyword inputs of the dual encoder's forward, passed only when the batch has them.
OPTIONAL_INPUTS = ("text_types", "prompt_ids", "prompt_mask", "extra_texts", "extra_images", "paraphrase_ids",
                   "paraphrase_mask")


def model_inputs(batch: dict) -> tuple[tuple, dict]:
    """Positional and keyword arguments of the model's forward; hard-negative captions, text types and
    prompts only when the batch has them (only the dual encoder takes them)."""
    inputs = (batch["images"], batch["text_ids"], batch["text_mask"], batch["channel_ids"])
    if "negative_ids" in batch:
        inputs += (batch["negative_ids"], batch["negative_mask"])
    return inputs, {name: batch[name] for name in OPTIONAL_INPUTS if name in batch}


def forward_kwargs(objective) -> dict:
    """Keyword arguments of the model's forward for ``objective``: a loss on embeddings lets the dual
    encoder compute only what its heads read (``DualEncoder.forward(embeddings_only=True)``)."""
    return {"embeddings_only": True} if getattr(objective, "embeddings_only", False) else {}


def forward_backward(model: nn.Module, objective, batch: dict, accum_steps: int = 1,
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict]:
    """Loss of the whole (local) batch, with its gradients accumulated into ``.grad``. ``dtype``: the
    forward's autocast precision (``vlalign.train.precision``); the loss is always computed in fp32."""
    if accum_steps == 1:
        args, kwargs = model_inputs(batch)
        with autocast(dtype, _device(model)):
            out = model(*args, **kwargs, **forward_kwargs(objective))
        loss, metrics = objective(outputs_in_fp32(out), batch)
        loss.backward()
        return loss.detach(), metrics
    return grad_cache(model, objective, batch, accum_steps, dtype)


def grad_cache(model: nn.Module, objective, batch: dict, accum_steps: int,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict]:
    """Gradient accumulation that stays exact for batch-level losses (GradCache: Gao et al. 2021,
    "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", §3.2).

    A contrastive loss couples every pair in the batch, so summing per-micro-batch losses would
    shrink the negatives to one micro-batch. Instead: (1) embed every micro-batch without a graph;
    (2) compute the loss on the full cached batch (gathered across ranks inside the loss) and
    backpropagate it to the embeddings and the logit scale/bias only; (3) re-run each micro-batch
    with a graph and backpropagate the cached embedding gradients through the towers. Each
    micro-batch's re-run replays the RNG state of its first pass, so random layers (channel
    sampling, dropout) see the same draws both times.
    """
    micro = split_batch(batch, accum_steps)
    device = _device(model)
    rng_states, images, texts, negatives, paraphrases = [], [], [], [], []
    with torch.no_grad():
        for part in micro:
            rng_states.append(_rng_snapshot())
            args, kwargs = model_inputs(part)
            with autocast(dtype, device):
                out = outputs_in_fp32(model(*args, **kwargs, **forward_kwargs(objective)))
            images.append(out.image_embeds)
            texts.append(out.text_embeds)
            negatives.append(out.negative_embeds)
            paraphrases.append(out.paraphrase_embeds)
    after_first_pass = _rng_snapshot()
    image = torch.cat(images).requires_grad_()  # [B, E]
    text = torch.cat(texts).requires_grad_()  # [B, E]
    negative = None if negatives[0] is None else torch.cat(negatives).requires_grad_()  # [B, E]
    paraphrase = None if paraphrases[0] is None else torch.cat(paraphrases).requires_grad_()  # [B, E]
    cached = AlignmentOutput(image, text, model.logit_scale.exp(), model.logit_bias, vision=None, text=None,
                             negative_embeds=negative, paraphrase_embeds=paraphrase)
    loss, metrics = objective(cached, batch)
    loss.backward()  # -> image.grad, text.grad (negative.grad, paraphrase.grad) and the logit scale/bias gradients
    sizes = [part["images"].shape[0] for part in micro]
    negative_grads = [None] * len(micro) if negative is None else negative.grad.split(sizes)
    paraphrase_grads = [None] * len(micro) if paraphrase is None else paraphrase.grad.split(sizes)
    for part, state, g_image, g_text, g_negative, g_paraphrase in zip(
            micro, rng_states, image.grad.split(sizes), text.grad.split(sizes), negative_grads, paraphrase_grads):
        _rng_restore(state)
        args, kwargs = model_inputs(part)
        with autocast(dtype, device):
            out = model(*args, **kwargs, **forward_kwargs(objective))
        outputs, grads = [out.image_embeds, out.text_embeds], [g_image, g_text]
        for embeds, grad in ((out.negative_embeds, g_negative), (out.paraphrase_embeds, g_paraphrase)):
            if grad is not None:
                outputs.append(embeds)
                grads.append(grad)
        torch.autograd.backward(outputs, grads)
    _rng_restore(after_first_pass)
    return loss.detach(), metrics


def _device(model: nn.Module) -> str:
    return next(model.parameters()).device.type


def split_batch(batch: dict, parts: int) -> list[dict]:
    """Split tensors and lists along the batch axis into ``parts`` equal micro-batches."""
    size = batch["images"].shape[0]
    if size % parts:
        raise ValueError(f"a batch of {size} does not split into {parts} equal micro-batches")
    step = size // parts
    out = []
    for i in range(parts):
        window = slice(i * step, (i + 1) * step)
        out.append({k: v[window] if torch.is_tensor(v) or (isinstance(v, list) and len(v) == size) else v
                    for k, v in batch.items()})
    return out


def _rng_snapshot() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _rng_restore(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def train_step(model: nn.Module, objective, optimizer: torch.optim.Optimizer, batch: dict, state: TrainState,
               cfg: RunConfig, strategy, dtype: torch.dtype = torch.float32) -> dict[str, float] | None:
    """One step; returns its metrics, or None when a non-finite step was skipped (policy "skip").
    ``dtype``: the forward's precision, ``train.precision`` resolved for this device."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    batch = batch | {"step": state.step}  # objectives that schedule a term read it (a resumed run restores it)
    try:
        loss, metrics = forward_backward(model, objective, batch, cfg.train.accum_steps, dtype)
    except torch.OutOfMemoryError as err:
        optimizer.zero_grad(set_to_none=True)
        raise out_of_memory(state, cfg, batch) from err
    strategy.reduce_gradients(model)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = global_norm(grads)
    # One collective decides for every rank, so a NaN on any rank stops all of them before the update.
    bad = not (math.isfinite(loss.item()) and math.isfinite(grad_norm))
    if dist.all_reduce_max(float(bad)) > 0:
        handle_nonfinite(state, cfg, loss.item(), grad_norm)
        return None
    set_lr(optimizer, lr_at(state.step, cfg.train.steps, cfg.optim))
    if cfg.optim.grad_clip > 0:
        clip_gradients(grads, cfg.optim.grad_clip, grad_norm)
    optimizer.step()
    ranks = shrink_rank_importance(model, optimizer.param_groups[0]["lr"])  # rank-lora's L1 proximal step
    clamp_logit_scale(model, cfg.objective.max_logit_scale)
    state.step += 1
    state.samples_seen += batch_size(batch) * dist.world_size()
    state.consecutive_nonfinite = 0
    record = {"loss": loss.item(), "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
              "param_norm": global_norm(list(model.parameters()))}
    if getattr(model, "logit_scale", None) is not None:  # a text-only language model has none
        record["logit_scale"] = model.logit_scale.exp().item()
    return record | ranks | metrics


def out_of_memory(state: TrainState, cfg: RunConfig, batch: dict) -> OutOfMemory:
    """A readable OOM: where, with what batch, and what to change. The weights were not updated."""
    per_device = batch_size(batch)
    return OutOfMemory(
        f"Out of memory at step {state.step + 1} with a per-device batch of {per_device} "
        f"(data.batch_size={cfg.data.batch_size} over {dist.world_size()} process(es), "
        f"train.accum_steps={cfg.train.accum_steps}, image size {cfg.data.image_size}). Nothing of this step was "
        "applied or saved. Raise train.accum_steps (contrastive losses stay exact: features are cached, "
        "GradCache-style) or lower data.batch_size, then rerun the same command to resume from the last checkpoint.")


def handle_nonfinite(state: TrainState, cfg: RunConfig, loss: float, grad_norm: float) -> None:
    """The update is never applied. Policy "error" stops; "skip" counts and stops after K in a row."""
    where = f"step {state.step + 1} (loss={loss}, grad_norm={grad_norm})"
    if cfg.train.nonfinite_policy == "error":
        raise NonFiniteError(f"Non-finite loss or gradient at {where}; the weights were not updated. "
                             "Lower optim.lr, check the data, or set train.nonfinite_policy=skip.")
    state.skipped_steps += 1
    state.consecutive_nonfinite += 1
    if state.consecutive_nonfinite > cfg.train.max_consecutive_nonfinite:
        raise NonFiniteError(f"{state.consecutive_nonfinite} non-finite steps in a row, the last at {where}: "
                             f"more than train.max_consecutive_nonfinite={cfg.train.max_consecutive_nonfinite}.")
    log.warning("skipped non-finite %s", where)


def clamp_logit_scale(model: nn.Module, max_scale: float) -> None:
    """CLIP (Radford et al. 2021, §2.5) clips the logit scale at 100: exp(logit_scale) <= max_scale.

    The bound is the largest float32 not above ln(max_scale): float32(ln 100) itself rounds up.
    """
    if getattr(model, "logit_scale", None) is None:
        return
    param = model.logit_scale
    bound = torch.tensor(math.log(max_scale), dtype=param.dtype)
    if bound.item() > math.log(max_scale):
        bound = torch.nextafter(bound, torch.tensor(-math.inf, dtype=param.dtype))
    with torch.no_grad():
        param.clamp_(max=bound.item())
