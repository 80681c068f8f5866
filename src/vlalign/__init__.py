"""vlalign: vision-language alignment you can read, trust and run anywhere.

>>> import vlalign
>>> model = vlalign.load("runs/shapes-clip")          # doctest: +SKIP
>>> model.encode_text(["a small red circle"]).shape    # doctest: +SKIP
torch.Size([1, 128])
"""

__version__ = "0.1.0"

from vlalign.api import Aligner, VisualAssistant, load  # noqa: E402

__all__ = ["Aligner", "VisualAssistant", "load", "__version__"]
