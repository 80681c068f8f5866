"""vlalign: vision-language alignment you can read, trust and run anywhere."""

__version__ = "0.1.0"
