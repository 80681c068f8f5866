"""Options that change how a step is computed, never what it computes: gradient checkpointing
(``train.grad_checkpointing``) and ``torch.compile`` (``train.compile``). Precision is in
``precision.py``, the optimizer kernel in ``optim.py``."""

from __future__ import annotations

import logging

from torch import nn

from vlalign.errors import ConfigError

log = logging.getLogger(__name__)


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Recompute every transformer block's activations during backward instead of keeping them
    (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"): activation memory drops to one
    block's worth per stack, for about one extra forward. Returns the number of block stacks switched."""
    stacks = [m for m in model.modules() if hasattr(m, "grad_checkpointing")]
    if not stacks:
        raise ConfigError(f"train.grad_checkpointing=true, but this {type(model).__name__} has no transformer "
                          "blocks that can recompute (a pretrained Hugging Face tower does not). Set it to false.")
    for module in stacks:
        module.grad_checkpointing = True
    return len(stacks)


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` the model in place (``nn.Module.compile``: parameter names and the state dict are
    unchanged, so checkpoints are interchangeable with uncompiled runs). The first step of each new input
    shape or grad mode compiles (minutes on a small CPU); later steps run the fused kernels.
    ``backend="aot_eager"`` traces the same graphs without generating code (fast; used by the tests)."""
    model.compile(backend=backend)
    log.info("compiling the model with torch.compile(backend=%r); the first steps are slow", backend)
    return model
