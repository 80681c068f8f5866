"""Metric sinks beside ``metrics.jsonl`` (``train.log_to``): TensorBoard event files, an offline W&B run.

Each sink gets every record ``MetricsLog`` writes and logs its numbers (strings such as ``precision``
stay in ``metrics.jsonl``) at the record's ``step``. Both packages are optional extras; a missing one
stops the run before training with the line to install it.
"""

from __future__ import annotations

import numbers
from pathlib import Path

from vlalign.config import RunConfig, to_dict
from vlalign.errors import ConfigError


def scalars(record: dict) -> dict[str, float]:
    """The numeric fields of a metrics record, ``step`` excepted."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, numbers.Real) and not isinstance(v, bool)}


class TensorBoardSink:
    """Scalars into ``RUN/tensorboard`` (``tensorboard --logdir RUN``). A resumed run hides the events it
    logged after its checkpoint (``purge_step``), as ``metrics.jsonl`` drops those lines."""

    def __init__(self, run_dir: Path, resume_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.log_to=[tensorboard] needs the tensorboard package: "
                              "pip install 'vlalign[tensorboard]'.") from None
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """An offline W&B run in ``RUN/wandb`` with the run's config; ``wandb sync RUN/wandb/offline-run-*``
    uploads it from a machine that can reach W&B."""

    def __init__(self, run_dir: Path, cfg: RunConfig):
        try:
            import wandb
        except ImportError:
            raise ConfigError("train.log_to=[wandb] needs the wandb package: pip install 'vlalign[wandb]'.") from None
        self.run = wandb.init(mode="offline", dir=str(run_dir), project="vlalign", name=cfg.name,
                              config=to_dict(cfg))

    def write(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


def open_sinks(cfg: RunConfig, run_dir: Path, resume_step: int) -> list:
    """The sinks ``cfg.train.log_to`` names, opened for ``run_dir``."""
    opened = {"tensorboard": lambda: TensorBoardSink(run_dir, resume_step), "wandb": lambda: WandbSink(run_dir, cfg)}
    return [opened[name]() for name in cfg.train.log_to]
