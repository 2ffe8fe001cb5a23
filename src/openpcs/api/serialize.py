"""Output shaping, read from the service model: handlers return plain dicts, this makes them wire JSON.

Only members the output shape names are sent (so internal fields never leak), None is omitted, and
timestamps (kept as unix seconds) are written in the shape's timestampFormat. Each shape is turned
once into a small function, so a response costs no walk over the model.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any

from botocore.model import Shape

Shaper = Callable[[Any], Any]


@lru_cache(maxsize=16384)  # the same createdAt/modifiedAt are served over and over
def _iso8601(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@cache  # noqa: B019 - one entry per shape of the service models, which live for the process
def _shaper(shape: Shape) -> Shaper | None:
    """A function that shapes a value of `shape`, or None where the value goes out as it is."""
    kind = shape.type_name
    if kind == "structure":
        members = [(name, _shaper(member)) for name, member in shape.members.items()]

        def structure(value: dict[str, Any]) -> dict[str, Any]:
            out = {}
            for name, shape_member in members:
                item = value.get(name)
                if item is not None:
                    out[name] = shape_member(item) if shape_member else item
            return out
        return structure
    if kind == "list":
        item_shaper = _shaper(shape.member)
        return (lambda value: [item_shaper(item) for item in value]) if item_shaper else list
    if kind == "map":
        value_shaper = _shaper(shape.value)
        return (lambda value: {k: value_shaper(v) for k, v in value.items()}) if value_shaper else dict
    if kind == "timestamp":
        fmt = shape.serialization.get("timestampFormat", shape.metadata.get("timestampFormat"))
        return _iso8601 if fmt == "iso8601" else None
    return None


def shape_output(shape: Shape | None, value: Any) -> Any:
    if shape is None:
        return {}
    shaper = _shaper(shape)
    return shaper(value) if shaper else value
