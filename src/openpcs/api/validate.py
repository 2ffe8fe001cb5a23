"""Generic input validation, read from the service model: no per-operation code.

Walks an input shape and the parsed JSON together and reports every broken constraint the model
states — required members, types, string lengths, patterns, enums, numeric ranges, list and map sizes —
in the words AWS uses ("Value 'x' at 'clusterName' failed to satisfy constraint: ...").
Members the model does not know are ignored, as AWS JSON services ignore them.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from botocore.model import Shape

from .errors import ApiError, validation_error

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "structure": (dict,),
    "map": (dict,),
    "list": (list,),
    "string": (str,),
    "integer": (int,),
    "long": (int,),
    "boolean": (bool,),
    "double": (int, float),
    "float": (int, float),
    "timestamp": (int, float, str),
    "blob": (str,),
}

# Smithy's integer is 32-bit and long 64-bit; JSON numbers beyond them cannot be parsed into the shape.
_INTEGER_BITS = {"integer": 32, "long": 64}


@cache
def _pattern(expr: str) -> re.Pattern[str]:
    # Smithy patterns are ECMA-262 regular expressions matched anywhere in the value (not anchored).
    return re.compile(expr)


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 100 else text[:100] + "..."


class _Walk:
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.unparsable = False

    def fail(self, path: str, message: str) -> None:
        self.errors.append((path, message))

    def value(self, shape: Shape, value: Any, path: str) -> None:
        kind = shape.type_name
        expected = _JSON_TYPES.get(kind, (object,))
        if not isinstance(value, expected) or (kind in ("integer", "long", "double", "float")
                                                and isinstance(value, bool)):
            self.unparsable = True
            article = "an" if kind[0] in "aeiou" else "a"
            self.fail(path, f"Value at '{path}' failed to satisfy constraint: Member must be {article} {kind}")
            return
        if kind in _INTEGER_BITS and not -(2 ** (_INTEGER_BITS[kind] - 1)) <= value < 2 ** (_INTEGER_BITS[kind] - 1):
            self.unparsable = True
            self.fail(path, f"Value '{value}' at '{path}' failed to satisfy constraint: Member must be "
                            f"a {_INTEGER_BITS[kind]}-bit {kind}")
            return
        getattr(self, "_" + kind, self._scalar)(shape, value, path)

    def _structure(self, shape: Shape, value: dict[str, Any], path: str) -> None:
        prefix = f"{path}." if path else ""
        for name in shape.required_members:
            if value.get(name) is None:
                self.fail(prefix + name, f"Value null at '{prefix}{name}' failed to satisfy constraint: "
                                         "Member must not be null")
        for name, member in shape.members.items():
            if value.get(name) is not None:
                self.value(member, value[name], prefix + name)

    def _list(self, shape: Shape, value: list[Any], path: str) -> None:
        self._size(shape, len(value), path, "length")
        for index, item in enumerate(value, start=1):
            if item is None:
                self.fail(f"{path}.{index}.member", f"Value null at '{path}.{index}.member' failed to "
                                                    "satisfy constraint: Member must not be null")
            else:
                self.value(shape.member, item, f"{path}.{index}.member")

    def _map(self, shape: Shape, value: dict[str, Any], path: str) -> None:
        self._size(shape, len(value), path, "length")
        for key, item in value.items():
            self.value(shape.key, key, f"{path}.key")
            if item is None:
                self.fail(f"{path}.value", f"Value null at '{path}.{key}' failed to satisfy constraint: "
                                           "Member must not be null")
            else:
                self.value(shape.value, item, f"{path}.{key}")

    def _string(self, shape: Shape, value: str, path: str) -> None:
        meta = shape.metadata
        self._size(shape, len(value), path, "length", value)
        if shape.enum and value not in shape.enum:
            self.fail(path, f"Value '{_shown(value)}' at '{path}' failed to satisfy constraint: "
                            f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
        pattern = meta.get("pattern")
        if pattern and not _pattern(pattern).search(value):
            self.fail(path, f"Value '{_shown(value)}' at '{path}' failed to satisfy constraint: "
                            f"Member must satisfy regular expression pattern: {pattern}")

    def _integer(self, shape: Shape, value: int, path: str) -> None:
        self._bounds(shape, value, path, f"Value '{value}' at '{path}'", "value")

    _long = _integer
    _double = _integer
    _float = _integer

    def _scalar(self, shape: Shape, value: Any, path: str) -> None:
        """Booleans, timestamps and blobs carry no constraints beyond their type."""

    def _size(self, shape: Shape, size: int, path: str, what: str, value: Any = None) -> None:
        subject = f"Value '{_shown(value)}' at '{path}'" if isinstance(value, str) else f"Value at '{path}'"
        self._bounds(shape, size, path, subject, what)

    def _bounds(self, shape: Shape, number: float, path: str, subject: str, what: str) -> None:
        """The model's min and max, on a number itself (what='value') or on a length."""
        meta = shape.metadata
        if "min" in meta and number < meta["min"]:
            self.fail(path, f"{subject} failed to satisfy constraint: "
                            f"Member must have {what} greater than or equal to {meta['min']}")
        if "max" in meta and number > meta["max"]:
            self.fail(path, f"{subject} failed to satisfy constraint: "
                            f"Member must have {what} less than or equal to {meta['max']}")


def validate(shape: Shape | None, params: Any) -> None:
    """Raise a ValidationException listing every constraint of `shape` that `params` breaks."""
    if shape is None:
        return
    walk = _Walk()
    walk.value(shape, params, "")
    if not walk.errors:
        return
    count = len(walk.errors)
    noun = "error" if count == 1 else "errors"
    message = f"{count} validation {noun} detected: " + "; ".join(msg for _, msg in walk.errors)
    raise validation_error(message, walk.errors,
                           reason="cannotParse" if walk.unparsable else "fieldValidationFailed")


def require_object(params: Any) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise ApiError("ValidationException", "The request body must be a JSON object.",
                       reason="cannotParse")
    return params
