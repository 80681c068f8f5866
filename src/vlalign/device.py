"""Where the model and its tensors live: ``train.device`` resolved to a ``torch.device``, and batches moved there.

"auto" is this process's CUDA device when CUDA is available (under torchrun each rank's own, which
``vlalign.train.distributed.process_group`` selects from LOCAL_RANK), else the CPU. Everything that runs a
model follows the setting: training (model, batches, losses), ``vlalign.load`` (and so eval, embed and
serve), unless ``vlalign.load(..., device=...)`` names another.
"""

from __future__ import annotations

import re

import torch

from vlalign.errors import ConfigError

DEVICE_SETTING = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_setting(setting: str, key: str = "train.device") -> None:
    if not DEVICE_SETTING.fullmatch(setting):
        raise ConfigError(f"{key} is '{setting}'; use auto, cpu, cuda or cuda:N.")


def resolve_device(setting: str = "auto") -> torch.device:
    """``setting`` (auto | cpu | cuda | cuda:N) -> the device; asking for CUDA where there is none is an error."""
    check_setting(setting)
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device={setting}, but torch {torch.__version__} sees no CUDA device here. "
                          "Use train.device=auto (CUDA when available, else the CPU) or cpu.")
    if setting in ("auto", "cuda"):
        return torch.device("cuda", torch.cuda.current_device())
    device = torch.device(setting)
    if device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={setting}, but this machine has {torch.cuda.device_count()} CUDA devices.")
    return device


def to_device(batch, device: torch.device):
    """A batch (tensors, dicts of them, anything else left as it is) on ``device``. Copies from pinned host memory
    are asynchronous on CUDA (``non_blocking``); the next kernel on the stream waits for them."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=batch.is_pinned())
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
