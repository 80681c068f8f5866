"""``--data SPEC`` strings: ``name:argument``, e.g. ``shapes:n=2000,seed=7`` or ``csv:pairs.csv``.

Each source registers a builder for its name; the builder receives the text after the colon.
"""

from __future__ import annotations

from typing import Callable

from vlalign.data.sample import Source
from vlalign.errors import DataError

SOURCES: dict[str, Callable[[str], Source]] = {}
HELP: dict[str, str] = {}


def register_source(name: str, example: str):
    def wrap(builder: Callable[[str], Source]):
        SOURCES[name] = builder
        HELP[name] = example
        return builder

    return wrap


def parse_kv(argument: str, allowed: dict[str, type], spec: str) -> dict:
    """Parse ``k=v,k=v`` against ``allowed`` (name -> type); unknown keys and bad values raise DataError."""
    out = {}
    for item in filter(None, (part.strip() for part in argument.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise DataError(f"Data spec '{spec}': expected key=value, got '{item}'.")
        if key not in allowed:
            raise DataError(f"Data spec '{spec}': unknown option '{key}'. Options: {', '.join(allowed)}.")
        try:
            out[key] = allowed[key](value)
        except ValueError:
            raise DataError(f"Data spec '{spec}': option '{key}' expects {allowed[key].__name__}, got '{value}'.") from None
    return out


def build_source(spec: str) -> Source:
    """Build the source named by ``spec``; errors say which sources exist and how to write them."""
    if not isinstance(spec, str) or ":" not in spec:
        raise DataError(f"Data spec {spec!r} has no source name. Write NAME:ARGS, e.g. {_examples()}.")
    name, argument = spec.split(":", 1)
    if name not in SOURCES:
        raise DataError(f"Unknown data source '{name}' in spec '{spec}'. Known sources: {_examples()}.")
    return SOURCES[name](argument)


def _examples() -> str:
    return "; ".join(HELP[n] for n in sorted(HELP))


# Importing the built-in sources registers them.
from vlalign.data import sources as _sources  # noqa: E402,F401
