"""Built-in data sources, registered by name for ``--data SPEC`` strings."""

from __future__ import annotations

from vlalign.data.sample import Source
from vlalign.data.specs import register_source
from vlalign.errors import DataError


@register_source("shapes", "shapes:n=2000,seed=7[,objects=1][,channels=stains][,holdout=green-triangle+blue-star]")
def shapes_source(argument: str) -> Source:
    from vlalign.data.shapes import parse_shapes_spec

    args = {}
    for item in filter(None, (p.strip() for p in argument.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise DataError(f"Data spec 'shapes:{argument}': expected key=value, got '{item}'.")
        args[key] = value
    try:
        return parse_shapes_spec(args)
    except ValueError as err:
        raise DataError(f"Data spec 'shapes:{argument}': {err}") from None
