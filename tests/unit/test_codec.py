"""Tests for p2pmesh/core/codec.py: canonical round trip, refusals, limits, and the fuzz invariant.

The invariant under test (codec module docstring, STYLE R7): on any input ``decode`` returns a
value or raises ``DecodeError``, nothing else, and exactly one byte string encodes each value.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmesh.core import codec
from p2pmesh.errors import DecodeError

# Values in the canonical set, within every limit (depth, lengths), so each must round trip.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=30,
)


def _depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    return 0


@given(values)
def test_round_trip(value: Any) -> None:
    if _depth(value) > codec.MAX_DEPTH:
        return  # recursion can exceed the limit; the limit has its own tests below
    data = codec.encode(value)
    assert codec.decode(data) == value
    # One value, one encoding: encoding the decoded value gives the same bytes.
    assert codec.encode(codec.decode(data)) == data


@given(st.dictionaries(st.text(max_size=6), st.integers(-(2**63), 2**64 - 1), max_size=10))
def test_key_order_does_not_change_bytes(d: dict[str, int]) -> None:
    reversed_d = dict(reversed(list(d.items())))
    assert codec.encode(d) == codec.encode(reversed_d)


def test_keys_sorted_by_utf8_bytes() -> None:
    # "é" (c3 a9) sorts after "z" (7a) in UTF-8 byte order; "B" (42) before "a" (61).
    data = codec.encode({"é": 1, "z": 2, "a": 3, "B": 4, "": 5, "aa": 6})
    assert list(msgpack.unpackb(data, raw=False)) == ["", "B", "a", "aa", "z", "é"]


def test_tuple_encodes_as_list() -> None:
    assert codec.encode((1, 2)) == codec.encode([1, 2])
    assert codec.decode(codec.encode((1, 2))) == [1, 2]


def test_bytes_and_text_stay_distinct() -> None:
    assert codec.decode(codec.encode(b"ab")) == b"ab"
    assert codec.decode(codec.encode("ab")) == "ab"
    assert codec.encode(b"ab") != codec.encode("ab")


# -- refusals of non-canonical spellings --------------------------------------------------------


def test_unsorted_keys_refused() -> None:
    # fixmap of 2: "b": 1, "a": 2, written by hand in the wrong order.
    data = b"\x82\xa1b\x01\xa1a\x02"
    with pytest.raises(DecodeError, match="canonical"):
        codec.decode(data)
    assert codec.decode(b"\x82\xa1a\x02\xa1b\x01") == {"a": 2, "b": 1}


def test_duplicate_keys_refused() -> None:
    with pytest.raises(DecodeError):
        codec.decode(b"\x82\xa1a\x01\xa1a\x02")


@pytest.mark.parametrize(
    "data",
    [
        b"\xcc\x05",  # uint8 5: fits a positive fixint
        b"\xcd\x00\x05",  # uint16 5
        b"\xce\x00\x00\x00\x05",  # uint32 5
        b"\xcf\x00\x00\x00\x00\x00\x00\x00\x05",  # uint64 5
        b"\xd0\x05",  # int8 +5
        b"\xd0\xff",  # int8 -1: fits a negative fixint
        b"\xd1\xff\xff",  # int16 -1
        b"\xcd\x00\xff",  # uint16 255: fits uint8
        b"\xd9\x01a",  # str8 "a": fits fixstr
        b"\xda\x00\x01a",  # str16 "a"
        b"\xc5\x00\x01a",  # bin16 b"a": fits bin8
        b"\xdc\x00\x01\x01",  # array16 [1]: fits fixarray
        b"\xde\x00\x01\xa1a\x01",  # map16 {"a": 1}: fits fixmap
    ],
)
def test_non_minimal_encodings_refused(data: bytes) -> None:
    with pytest.raises(DecodeError, match="canonical"):
        codec.decode(data)


def test_str_is_not_bytes() -> None:
    # Old msgpack (no bin type) wrote bytes as str: it decodes as text, never as bytes, so a
    # field that must be bytes (a key, a signature) refuses it at the schema layer.
    data = msgpack.packb(b"abc", use_bin_type=False)
    assert codec.decode(data) == "abc"
    # Raw bytes in a str that are not UTF-8 are refused outright.
    with pytest.raises(DecodeError):
        codec.decode(b"\xa2\xff\xfe")


@pytest.mark.parametrize("value", [1.5, 0.0, float("nan"), [1, 2.5], {"a": -0.0}])
def test_floats_refused_on_encode(value: Any) -> None:
    with pytest.raises(DecodeError, match="float"):
        codec.encode(value)


@pytest.mark.parametrize(
    "data",
    [
        b"\xca" + struct.pack(">f", 1.5),  # float32
        b"\xcb" + struct.pack(">d", 1.5),  # float64
        b"\x91\xcb" + struct.pack(">d", 2.0),  # float64 inside a list
    ],
)
def test_floats_refused_on_decode(data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xd4\x01\x00",  # fixext1
        b"\xc7\x00\x05",  # ext8 of length 0
        b"\xd6\xff\x00\x00\x00\x01",  # timestamp32 extension
    ],
)
def test_extension_types_refused(data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode(data)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
def test_out_of_range_int_refused_on_encode(value: int) -> None:
    # Regression: msgpack's OverflowError used to escape ``encode``.
    with pytest.raises(DecodeError):
        codec.encode(value)


@pytest.mark.parametrize(
    "value",
    [
        "x" * (codec.MAX_STR_BYTES + 1),
        "é" * (codec.MAX_STR_BYTES // 2 + 1),  # counted in UTF-8 bytes
        b"x" * (codec.MAX_BIN_BYTES + 1),
        [0] * (codec.MAX_CONTAINER_LEN + 1),
        {f"k{i}": 0 for i in range(codec.MAX_CONTAINER_LEN + 1)},
        "\ud800",  # a lone surrogate has no UTF-8 encoding
    ],
)
def test_encode_applies_decode_limits(value: Any) -> None:
    # Regression: whatever ``encode`` produces, ``decode`` accepts; so it refuses the rest.
    with pytest.raises(DecodeError):
        codec.encode(value)


@pytest.mark.parametrize("value", [{1: "a"}, {b"a": 1}, {None: 1}, object(), {1, 2}])
def test_non_canonical_types_refused_on_encode(value: Any) -> None:
    with pytest.raises(DecodeError):
        codec.encode(value)


@pytest.mark.parametrize(
    "data",
    [
        b"\x81\x01\x01",  # int key
        b"\x81\xc4\x01a\x01",  # bytes key
        b"\x81\xc0\x01",  # nil key
    ],
)
def test_non_text_keys_refused_on_decode(data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode(data)


@pytest.mark.parametrize("data", [b"", b"\x91", b"\xa5abc", b"\x01\x02", b"\xc1", b"\x82\xa1a"])
def test_truncated_trailing_and_reserved_refused(data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode(data)


@pytest.mark.parametrize("data", ["text", 5, None, [1]])
def test_non_bytes_input_refused(data: Any) -> None:
    with pytest.raises(DecodeError):
        codec.decode(data)


def test_bytes_like_inputs_accepted() -> None:
    data = codec.encode({"a": [1, b"x"]})
    assert codec.decode(bytearray(data)) == {"a": [1, b"x"]}
    assert codec.decode(memoryview(data)) == {"a": [1, b"x"]}


# -- limits -------------------------------------------------------------------------------------


def _nest(levels: int, inner: Any) -> Any:
    v = inner
    for _ in range(levels):
        v = [v]
    return v


def test_depth_limit() -> None:
    # The top-level value sits at depth 0; any value (container or scalar) deeper than
    # MAX_DEPTH is refused, on encode and on decode.
    ok = _nest(codec.MAX_DEPTH, 0)  # the scalar sits at depth MAX_DEPTH
    assert codec.decode(codec.encode(ok)) == ok
    too_deep = _nest(codec.MAX_DEPTH + 1, 0)
    with pytest.raises(DecodeError, match="deeper"):
        codec.encode(too_deep)
    raw = b"\x91" * (codec.MAX_DEPTH + 1) + b"\x00"
    with pytest.raises(DecodeError):
        codec.decode(raw)
    # Maps count as nesting too.
    with pytest.raises(DecodeError):
        codec.decode(b"\x81\xa1a" * (codec.MAX_DEPTH + 1) + b"\x00")


def test_very_deep_input_is_refused_quickly() -> None:
    # 64 KiB of nested one-element arrays: msgpack's own stack limit or ours, never a crash.
    with pytest.raises(DecodeError):
        codec.decode(b"\x91" * (codec.MAX_MESSAGE_BYTES - 1) + b"\x00")


def test_message_size_limit() -> None:
    big = b"x" * (codec.MAX_BIN_BYTES - 10)
    value = [big, big]  # two bins just under their own limit fit in one 64 KiB message
    data = codec.encode(value)
    assert len(data) <= codec.MAX_MESSAGE_BYTES
    with pytest.raises(DecodeError, match="limit"):
        codec.encode([big, big, big])
    with pytest.raises(DecodeError, match="limit"):
        codec.decode(data, max_bytes=len(data) - 1)
    assert codec.decode(data, max_bytes=len(data)) == value
    with pytest.raises(DecodeError, match="limit"):
        codec.decode(b"\x00" * (codec.MAX_MESSAGE_BYTES + 1))


def test_string_length_limit() -> None:
    at = "x" * codec.MAX_STR_BYTES
    assert codec.decode(codec.encode(at)) == at
    # Counted in UTF-8 bytes, not characters.
    with pytest.raises(DecodeError):
        codec.decode(msgpack.packb("é" * (codec.MAX_STR_BYTES // 2 + 1)))
    with pytest.raises(DecodeError):
        codec.decode(msgpack.packb("x" * (codec.MAX_STR_BYTES + 1)))


def test_bin_length_limit() -> None:
    at = b"x" * codec.MAX_BIN_BYTES
    assert codec.decode(codec.encode(at)) == at
    with pytest.raises(DecodeError):
        codec.decode(msgpack.packb(b"x" * (codec.MAX_BIN_BYTES + 1), use_bin_type=True))


def test_container_length_limits() -> None:
    at = [0] * codec.MAX_CONTAINER_LEN
    assert codec.decode(codec.encode(at)) == at
    with pytest.raises(DecodeError):
        codec.decode(msgpack.packb([0] * (codec.MAX_CONTAINER_LEN + 1)))
    m = {f"k{i:05}": 0 for i in range(codec.MAX_CONTAINER_LEN + 1)}
    with pytest.raises(DecodeError):
        codec.decode(msgpack.packb(m))


def test_huge_declared_lengths_do_not_allocate() -> None:
    # Headers claiming 4 GiB of content in a 5-byte message: refused, not buffered.
    for head in (b"\xdb", b"\xc6", b"\xdd", b"\xdf"):
        with pytest.raises(DecodeError):
            codec.decode(head + b"\xff\xff\xff\xff")


# -- fuzz: only DecodeError, ever ---------------------------------------------------------------


def _decode_or_decode_error(data: bytes) -> None:
    try:
        value = codec.decode(data)
    except DecodeError:
        return
    # Whatever was accepted is canonical: it re-encodes to exactly the input.
    assert codec.encode(value) == data


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_decode_error(data)


@settings(max_examples=400)
@given(values, st.data())
def test_fuzz_mutated_valid_encodings(value: Any, data: st.DataObject) -> None:
    if _depth(value) > codec.MAX_DEPTH:
        return
    raw = bytearray(codec.encode(value))
    op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
    pos = data.draw(st.integers(0, len(raw) - 1))
    if op == "flip":
        raw[pos] ^= data.draw(st.integers(1, 255))
    elif op == "insert":
        raw.insert(pos, data.draw(st.integers(0, 255)))
    elif op == "delete":
        del raw[pos]
    else:
        del raw[pos:]
    _decode_or_decode_error(bytes(raw))


@given(values)
def test_fuzz_every_prefix(value: Any) -> None:
    # A message delivered in pieces: every strict prefix of a valid encoding is refused.
    if _depth(value) > codec.MAX_DEPTH:
        return
    raw = codec.encode(value)
    for i in range(len(raw)):
        with pytest.raises(DecodeError):
            codec.decode(raw[:i])
