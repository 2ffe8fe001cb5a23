"""Output shaping, read from the service model: handlers return plain dicts, this makes them wire JSON.

Only members the output shape names are sent (so internal fields never leak), None is omitted, and
timestamps (kept as unix seconds) are written in the shape's timestampFormat.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from botocore.model import Shape


def _timestamp(shape: Shape, value: float) -> Any:
    if shape.serialization.get("timestampFormat", shape.metadata.get("timestampFormat")) == "iso8601":
        moment = datetime.fromtimestamp(value, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return value


def shape_output(shape: Shape | None, value: Any) -> Any:
    if shape is None or value is None:
        return {} if shape is None else None
    kind = shape.type_name
    if kind == "structure":
        out = {}
        for name, member in shape.members.items():
            item = value.get(name)
            if item is not None:
                out[name] = shape_output(member, item)
        return out
    if kind == "list":
        return [shape_output(shape.member, item) for item in value]
    if kind == "map":
        return {key: shape_output(shape.value, item) for key, item in value.items()}
    if kind == "timestamp":
        return _timestamp(shape, value)
    return value
