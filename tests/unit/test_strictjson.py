"""The strict JSON reader (core/strictjson.py): RFC 8259 only, duplicates listed, no crash."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmesh.core import strictjson
from p2pmesh.core.strictjson import Duplicate, JsonSyntaxError


def test_values_come_out_as_the_stdlib_makes_them() -> None:
    text = '{"a": [1, -0, 2.5, 1e-9, true, false, null, "x\\u00e9\\ud834\\udd1e"]}'
    value, duplicates = strictjson.read(text)
    assert value == json.loads(text)
    assert [type(v) for v in value["a"][:4]] == [int, int, float, float]
    assert duplicates == []


def test_duplicate_keys_are_listed_with_their_place_and_the_last_value_kept() -> None:
    value, duplicates = strictjson.read('{"a": 1,\n "b": {"c": 1, "c": 2},\n "a": 3}')
    assert value == {"a": 3, "b": {"c": 2}}
    assert duplicates == [Duplicate("b.c", 2, 16), Duplicate("a", 3, 2)]


@pytest.mark.parametrize(
    ("text", "message", "line", "column"),
    [
        ("NaN", "unexpected character 'N'", 1, 1),
        ("[1, Infinity]", "unexpected character 'I'", 1, 5),
        ("[1,]", "unexpected character ']'", 1, 4),
        ('{"a": 1} x', "extra text after the JSON value", 1, 10),
        ('"\\ud800"', "lone high surrogate", 1, 2),
        ('"\\udc00"', "lone low surrogate", 1, 2),
        ('"a\tb"', "control character", 1, 3),
        ("01", "extra text", 1, 2),
        ("1e999", "number out of range", 1, 1),
        ("1" * 65, "number longer than 64 characters", 1, 1),
        ("[" * 34 + "]" * 34, "nested deeper than 32 levels", 1, 34),
        ("{\n  'a': 1}", 'expected a "quoted" field name', 2, 3),
        ('"abc', "unterminated string", 1, 1),
        ("", "unexpected end of text", 1, 1),
    ],
)
def test_non_json_is_refused_with_a_position(
    text: str, message: str, line: int, column: int
) -> None:
    with pytest.raises(JsonSyntaxError) as caught:
        strictjson.read(text)
    assert message in caught.value.message
    assert (caught.value.line, caught.value.column) == (line, column)
    assert str(caught.value).startswith(f"line {line}, column {column}: ")


def test_limits_are_the_callers() -> None:
    assert strictjson.read("[[1]]", max_depth=2)[0] == [[1]]
    with pytest.raises(JsonSyntaxError, match="deeper than 1"):
        strictjson.read("[[1]]", max_depth=1)
    with pytest.raises(JsonSyntaxError, match="longer than 3"):
        strictjson.read("1234", max_number_chars=3)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300)
@given(_json_values, st.booleans())
def test_agrees_with_the_stdlib_on_json(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert strictjson.read(text) == (json.loads(text), [])


@settings(max_examples=500)
@given(st.text(alphabet='{}[]",:0123456789.eE+-\\u tnrfalsx\ud800', max_size=40))
def test_any_text_gives_a_value_or_a_syntax_error(text: str) -> None:
    try:
        value, _ = strictjson.read(text)
    except JsonSyntaxError:
        return
    assert value == json.loads(text)
