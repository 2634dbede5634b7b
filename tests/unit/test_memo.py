"""Memoised parsing (core/memo.py): same bytes, same checked value; failures never kept."""

from __future__ import annotations

import enum

import pytest

from p2pmesh.core import codec
from p2pmesh.core.auction import messages as m
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.memo import by_bytes
from p2pmesh.errors import DecodeError, ValidationError

SIGNER = Ed25519Signer(bytes(range(32)))


def test_success_is_parsed_once_and_shared() -> None:
    calls: list[bytes] = []

    @by_bytes
    def parse(raw: bytes) -> tuple[int, ...]:
        calls.append(raw)
        return tuple(raw)

    assert parse(b"\x01\x02") is parse(b"\x01\x02")
    assert calls == [b"\x01\x02"]


def test_failures_are_checked_every_time() -> None:
    calls: list[bytes] = []

    @by_bytes
    def parse(raw: bytes) -> int:
        calls.append(raw)
        raise ValidationError("bad")

    for _ in range(3):
        with pytest.raises(ValidationError):
            parse(b"x")
    assert len(calls) == 3


def test_mutable_or_unhashable_buffers_are_parsed_without_the_cache() -> None:
    calls: list[bytes] = []

    @by_bytes
    def parse(raw: bytes) -> int:
        calls.append(bytes(raw))
        return len(raw)

    buf = bytearray(b"abc")
    assert parse(buf) == 3 and parse(memoryview(b"abcd")) == 4
    buf[0:1] = b"zz"
    assert parse(buf) == 4  # a later change to the buffer is seen, not a stale entry
    assert len(calls) == 3


def test_a_real_message_parses_to_the_same_value_and_forgeries_still_fail() -> None:
    status = m.build_status(SIGNER, job_id="0" * 32, state="running", detail="", now=1)
    assert m.parse_status(status.raw) is m.parse_status(status.raw)
    assert m.parse_status(status.raw) == status
    forged = status.raw[:-1] + bytes([status.raw[-1] ^ 1])
    for _ in range(2):
        with pytest.raises((DecodeError, ValidationError)):
            m.parse_status(forged)


class Colour(enum.IntEnum):
    RED = 1


class Key(str):
    pass


def test_canonical_encoding_treats_subclasses_as_their_base_type() -> None:
    plain = {"b": [1, "x"], "a": {"c": 1}}
    fancy = {Key("b"): (Colour.RED, Key("x")), "a": {Key("c"): Colour.RED}}
    assert codec.encode(fancy) == codec.encode(plain)
    assert codec.decode(codec.encode(fancy)) == {"a": {"c": 1}, "b": [1, "x"]}


def test_canonical_key_order_is_utf8_byte_order() -> None:
    keys = ["é", "z", "A", "\U0001f600", "ab", "a", ""]
    data = codec.encode(dict.fromkeys(keys, 0))
    assert list(codec.decode(data)) == sorted(keys, key=lambda k: k.encode("utf-8"))


def test_long_text_is_measured_in_bytes() -> None:
    fits = "é" * (codec.MAX_STR_BYTES // 2)
    assert codec.decode(codec.encode(fits, max_bytes=1 << 20), max_bytes=1 << 20) == fits
    with pytest.raises(DecodeError, match="text longer"):
        codec.encode("é" * (codec.MAX_STR_BYTES // 2 + 1), max_bytes=1 << 20)
