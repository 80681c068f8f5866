"""Training: setup, the step, the loop, checkpoints and resume, multi-process strategies."""

from vlalign.train.step import TrainState
from vlalign.train.trainer import SIGTERM_EXIT_CODE, GracefulStop, run_training

__all__ = ["SIGTERM_EXIT_CODE", "GracefulStop", "TrainState", "run_training"]
