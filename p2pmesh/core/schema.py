"""Small checkers for decoded, untrusted maps: each raises ``ValidationError`` naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from p2pmesh.errors import ValidationError


def exact_keys(d: Mapping[str, Any], required: set[str], optional: set[str] = frozenset()) -> None:
    keys = set(d)
    missing = required - keys
    extra = keys - required - optional
    if missing:
        raise ValidationError(f"missing field(s): {', '.join(sorted(missing))}")
    if extra:
        raise ValidationError(f"unknown field(s): {', '.join(sorted(extra))}")


def int_in(d: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValidationError(f"{key}: must be an integer in [{lo}, {hi}]")
    return v


def text(d: Mapping[str, Any], key: str, max_len: int, *, min_len: int = 0) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not min_len <= len(v) <= max_len:
        raise ValidationError(f"{key}: must be text of {min_len}..{max_len} characters")
    return v


def boolean(d: Mapping[str, Any], key: str) -> bool:
    v = d.get(key)
    if not isinstance(v, bool):
        raise ValidationError(f"{key}: must be a boolean")
    return v


def text_list(d: Mapping[str, Any], key: str, max_items: int, max_len: int) -> tuple[str, ...]:
    v = d.get(key)
    if not isinstance(v, list) or len(v) > max_items:
        raise ValidationError(f"{key}: must be a list of at most {max_items} items")
    for item in v:
        if not isinstance(item, str) or not 0 < len(item) <= max_len:
            raise ValidationError(f"{key}: items must be text of 1..{max_len} characters")
    return tuple(v)


def mapping(d: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = d.get(key)
    if not isinstance(v, dict):
        raise ValidationError(f"{key}: must be a map")
    return v
