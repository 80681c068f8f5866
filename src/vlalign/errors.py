"""User-facing errors. The CLI prints these as one paragraph (no traceback unless ``--debug``)."""

from __future__ import annotations


class VlalignError(Exception):
    """An error the user can fix: the message says what was wrong and what to do."""

    exit_code = 2


class ConfigError(VlalignError):
    """A bad recipe, YAML file, ``--set`` override or config value."""


class DataError(VlalignError):
    """A data spec that matches nothing, a missing dataset, or too many corrupt samples."""


class CheckpointError(VlalignError):
    """A directory that is not a vlalign run or checkpoint, or one that does not match the config."""


class NonFiniteError(VlalignError):
    """A NaN or Inf loss or gradient norm, detected before the optimizer step."""


class OutOfMemory(VlalignError):
    """The step did not fit in memory; nothing of it was applied or saved."""

    exit_code = 3
