"""Towers and heads. Models return features; losses live in ``vlalign.objectives``."""

from vlalign.models.dual_encoder import AlignmentOutput, DualEncoder
from vlalign.models.factory import build_model

__all__ = ["AlignmentOutput", "DualEncoder", "build_model"]
