"""Training: setup, the step, the loop, checkpoints and resume."""

from vlalign.train.trainer import SIGTERM_EXIT_CODE, TrainState, run_training

__all__ = ["SIGTERM_EXIT_CODE", "TrainState", "run_training"]
