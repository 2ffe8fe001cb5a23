"""AWS's tagging rules: at most 50 tags a resource; keys of 1-128 and values of 0-256 characters from
letters, digits, spaces and `_ . : / = + - @`; keys starting with `aws:` are reserved for AWS."""

from __future__ import annotations

from ..api.errors import field_error, quota_exceeded
from ..store.resources import Resource

MAX_TAGS_PER_RESOURCE = 50
_SYMBOLS = set("_.:/=+-@")


def _allowed(text: str) -> bool:
    return all(ch.isalnum() or ch.isspace() or ch in _SYMBOLS for ch in text)


def check_tags(tags: dict[str, str] | None) -> None:
    for key, value in (tags or {}).items():
        if key.lower().startswith("aws:"):
            raise field_error("tags", f"Tag key '{key}' uses the reserved prefix 'aws:'")
        if not _allowed(key):
            raise field_error("tags", f"Tag key '{key}' may contain only letters, digits, spaces and _.:/=+-@")
        if not _allowed(value):
            raise field_error("tags", f"The value of tag '{key}' may contain only letters, digits, spaces "
                                      "and _.:/=+-@")
    if len(tags or {}) > MAX_TAGS_PER_RESOURCE:
        raise _too_many(len(tags or {}), None)


def merged_tags(resource: Resource, new: dict[str, str]) -> dict[str, str]:
    merged = {**resource.tags, **new}
    if len(merged) > MAX_TAGS_PER_RESOURCE:
        raise _too_many(len(merged), resource)
    return merged


def _too_many(count: int, resource: Resource | None) -> Exception:
    return quota_exceeded(f"A resource can have at most {MAX_TAGS_PER_RESOURCE} tags; this would make {count}. "
                          "Remove some with UntagResource first.", quota_code="tags-per-resource",
                          resource_id=resource.id if resource else None,
                          resource_type="resource" if resource else None)
