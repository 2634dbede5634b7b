"""Canonical msgpack: the one byte encoding that is signed and sent (docs/PROTOCOL.md §2).

Canonical form: maps with text keys in ascending UTF-8 byte order, no duplicate keys, the
shortest integer encoding, ``bin`` for bytes and ``str`` for text, no floats, no extension
types. ``decode`` accepts only bytes that re-encode to themselves, so one value has exactly one
encoding and a signature over it cannot be replayed under a second spelling.

Invariant (fuzzed in tests): on any input, ``decode`` returns a value or raises ``DecodeError``;
it never raises anything else and runs in time linear in the input.
"""

from __future__ import annotations

from typing import Any

import msgpack

from p2pmesh.errors import DecodeError

# A capability record is ~1 KiB; bids and awards are smaller. 64 KiB leaves room for offers with
# many inputs while keeping a hostile peer from making us buffer much.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_DEPTH = 8
MAX_CONTAINER_LEN = 1024
MAX_STR_BYTES = 16 * 1024
MAX_BIN_BYTES = 32 * 1024


_INT_MIN = -(2**63)
_INT_END = 2**64
# A code point is at most 4 bytes of UTF-8: text this short cannot be over the limit, so the
# common case skips encoding it just to measure it.
_SHORT_STR = MAX_STR_BYTES // 4


def _canonical(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise DecodeError(f"nesting deeper than {MAX_DEPTH}")
    # The same limits as ``decode``: whatever we send, every peer can read back. Exact types
    # first: this runs over every message the core signs, and isinstance chains cost.
    kind = type(value)
    if kind is str:
        if len(value) > _SHORT_STR and len(value.encode("utf-8", "surrogatepass")) > MAX_STR_BYTES:
            raise DecodeError(f"text longer than {MAX_STR_BYTES} bytes")
        return value
    if kind is int:
        if not _INT_MIN <= value < _INT_END:
            raise DecodeError("integer out of the 64-bit range")
        return value
    if kind is dict:
        if len(value) > MAX_CONTAINER_LEN:
            raise DecodeError(f"map longer than {MAX_CONTAINER_LEN}")
        if all(type(key) is str for key in value):
            # For exact str keys, code-point order is UTF-8 byte order.
            keys = sorted(value)
        else:
            for key in value:
                if not isinstance(key, str):
                    raise DecodeError("map keys must be text")
            keys = sorted(value, key=_key_bytes)
        return {k: _canonical(value[k], depth + 1) for k in keys}
    if kind is list or kind is tuple:
        if len(value) > MAX_CONTAINER_LEN:
            raise DecodeError(f"list longer than {MAX_CONTAINER_LEN}")
        return [_canonical(v, depth + 1) for v in value]
    if value is None or kind is bool or kind is bytes:
        if kind is bytes and len(value) > MAX_BIN_BYTES:
            raise DecodeError(f"bytes longer than {MAX_BIN_BYTES}")
        return value
    return _canonical_subclass(value, depth)


def _canonical_subclass(value: Any, depth: int) -> Any:
    """Instances of subclasses (an ``IntEnum``, a ``str`` subclass): checked as their base."""
    if isinstance(value, dict):
        return _canonical(dict(value), depth)
    if isinstance(value, list | tuple):
        return _canonical(list(value), depth)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _canonical(int(value), depth)
    if isinstance(value, str):
        return _canonical(str(value), depth)
    if isinstance(value, bytes):
        return _canonical(bytes(value), depth)
    raise DecodeError(f"type {type(value).__name__} has no canonical encoding")


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8")


def encode(value: Any, *, max_bytes: int = MAX_MESSAGE_BYTES) -> bytes:
    """Encode ``value`` canonically. Raises ``DecodeError`` for values outside the canonical set."""
    try:
        data: bytes = msgpack.packb(_canonical(value), use_bin_type=True)
    except (OverflowError, ValueError, TypeError, UnicodeEncodeError) as exc:
        raise DecodeError(f"cannot encode: {type(exc).__name__}") from None
    if len(data) > max_bytes:
        raise DecodeError(f"encoded value is {len(data)} bytes, limit {max_bytes}")
    return data


def decode(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode canonical bytes from an untrusted source, within size, length and depth limits."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("expected bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise DecodeError(f"message is {len(data)} bytes, limit {max_bytes}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=MAX_STR_BYTES,
            max_bin_len=MAX_BIN_BYTES,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a zoo of types on hostile bytes
        raise DecodeError(f"not msgpack: {type(exc).__name__}") from None
    # Canonical iff every map's keys are text in strictly ascending byte order (so no
    # duplicates), only canonical types occur, nesting is within MAX_DEPTH, and msgpack's own
    # (shortest-form) encoding of the value gives back exactly these bytes.
    _check_canonical(value, 0)
    try:
        again = msgpack.packb(value, use_bin_type=True)
    except Exception as exc:
        raise DecodeError(f"not canonical: {type(exc).__name__}") from None
    if again != data:
        raise DecodeError("not in canonical form")
    return value


_SCALARS = frozenset((str, bytes, int, bool, type(None)))


def _check_canonical(value: Any, depth: int) -> None:
    """Raise unless ``value`` (as msgpack decoded it) is in the canonical set (module doc).

    Runs on every block and message a node takes in, so scalars are checked in their
    container's loop rather than by a call each, and keys are compared as text: for valid
    UTF-8 (which the decoder enforces), code-point order is byte order.
    """
    kind = type(value)
    if kind is dict:
        if value and depth >= MAX_DEPTH:
            raise DecodeError(f"nesting deeper than {MAX_DEPTH}")
        prev = None
        for key, item in value.items():
            if type(key) is not str:
                raise DecodeError("map keys must be text")
            if prev is not None and key <= prev:
                raise DecodeError("not in canonical form")
            prev = key
            t = type(item)
            if t is dict or t is list:
                _check_canonical(item, depth + 1)
            elif t not in _SCALARS:
                raise DecodeError(f"type {t.__name__} has no canonical encoding")
    elif kind is list:
        if value and depth >= MAX_DEPTH:
            raise DecodeError(f"nesting deeper than {MAX_DEPTH}")
        for item in value:
            t = type(item)
            if t is dict or t is list:
                _check_canonical(item, depth + 1)
            elif t not in _SCALARS:
                raise DecodeError(f"type {t.__name__} has no canonical encoding")
    elif kind not in _SCALARS:
        raise DecodeError(f"type {kind.__name__} has no canonical encoding")
