"""A strict RFC 8259 JSON reader: text in, a value and its duplicate keys out.

The stdlib reader keeps the last of two equal keys silently and accepts ``NaN``/``Infinity``,
so a doubled or typo'd field in a hand-written file would change what it means without a word.
This reader refuses every non-JSON spelling with a position, and reports duplicate keys instead
of choosing one, so its caller (``core/jobspec.py`` for job files) can list them with the
file's other problems. It knows nothing about what the document means.

Values come out as the stdlib reader makes them: ``dict``, ``list``, ``str``, ``int`` (a
literal without fraction or exponent), ``float`` (any other number, finite), ``bool``, ``None``.
Where a key is doubled the last value is kept, as the stdlib does, and the duplicate is listed.

Invariant (fuzzed in tests/unit/test_strictjson.py): on any ``str`` the reader returns or raises
``JsonSyntaxError``, nothing else, and agrees with ``json.loads`` on every text both accept.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Duplicate", "JsonSyntaxError", "field_path", "read", "show"]

DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_NUMBER_CHARS = 64  # Python's int() is quadratic in the digits of a long literal

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f\ud800-\udfff]*')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9._/-]+", re.ASCII)
_HEX = frozenset("0123456789abcdefABCDEF")


class JsonSyntaxError(ValueError):
    """The text is not JSON; ``line`` and ``column`` (1-based, in characters) say where."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.message = message
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A key that occurs twice in one object: its path (``field_path`` form) and where."""

    path: str
    line: int
    column: int


def show(value: object) -> str:
    """A short rendering of an untrusted value: never recursive, never long."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**30 else "a huge integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        shown = json.dumps(value[:40], ensure_ascii=True)
        return shown + ("…" if len(value) > 40 else "")
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items" if value else "an empty list"
    return {dict: "an object", bytes: "bytes"}.get(type(value), type(value).__name__)


def field_path(parent: str, key: str) -> str:
    """Path of ``parent``'s ``key`` (``a.b``); odd keys are quoted so a message stays one line."""
    plain = _PLAIN_KEY_RE.fullmatch(key) and not key.startswith(("/", ".")) and ".." not in key
    if plain and len(key) <= 80:
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{show(key)}]"


def read(
    text: str,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_number_chars: int = DEFAULT_MAX_NUMBER_CHARS,
) -> tuple[Any, list[Duplicate]]:
    """One JSON value (surrounded by optional whitespace) and the duplicate keys met in it.

    Raises:
        JsonSyntaxError: anything that is not JSON, a number literal longer than
        ``max_number_chars`` or out of the binary64 range, or nesting deeper than ``max_depth``.
    """
    reader = _Reader(text, max_depth, max_number_chars)
    try:
        value = reader.document()
    except _Syntax as exc:
        line, column = reader.where(exc.pos)
        raise JsonSyntaxError(str(exc), line, column) from None
    return value, [Duplicate(path, *reader.where(pos)) for path, pos in reader.duplicates]


class _Syntax(Exception):
    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.pos = pos


class _Reader:
    def __init__(self, text: str, max_depth: int, max_number_chars: int) -> None:
        self.text = text
        self.pos = 0
        self.max_depth = max_depth
        self.max_number_chars = max_number_chars
        self.duplicates: list[tuple[str, int]] = []

    def where(self, pos: int) -> tuple[int, int]:
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return line, column

    def skip_ws(self) -> None:
        self.pos = _WS.match(self.text, self.pos).end()  # type: ignore[union-attr]

    def document(self) -> Any:
        self.skip_ws()
        value = self.value("", 0)
        self.skip_ws()
        if self.pos != len(self.text):
            raise _Syntax("extra text after the JSON value", self.pos)
        return value

    def value(self, path: str, depth: int) -> Any:
        # Depth is bounded here, so the recursion below never nears Python's own limit.
        if depth > self.max_depth:
            raise _Syntax(f"nested deeper than {self.max_depth} levels", self.pos)
        text, pos = self.text, self.pos
        ch = text[pos : pos + 1]
        if ch == "{":
            return self.obj(path, depth)
        if ch == "[":
            return self.array(path, depth)
        if ch == '"':
            return self.string()
        for word, result in (("true", True), ("false", False), ("null", None)):
            if text.startswith(word, pos):
                self.pos = pos + len(word)
                return result
        match = _NUMBER.match(text, pos)
        if match and match.end() > pos:
            return self.number(match)
        if not ch:
            raise _Syntax("unexpected end of text", pos)
        raise _Syntax(f"unexpected character {ch!r} (NaN, Infinity and comments are not JSON)", pos)

    def number(self, match: re.Match[str]) -> int | float:
        token = match.group()
        if len(token) > self.max_number_chars:
            raise _Syntax(f"number longer than {self.max_number_chars} characters", match.start())
        self.pos = match.end()
        if match.group(1) is None and match.group(2) is None:
            return int(token)
        number = float(token)
        if not math.isfinite(number):
            raise _Syntax("number out of range", match.start())
        return number

    def string(self) -> str:
        text, start = self.text, self.pos
        pos = start + 1
        parts: list[str] = []
        while True:
            run = _STRING_RUN.match(text, pos)
            assert run is not None  # the pattern matches the empty string
            parts.append(run.group())
            pos = run.end()
            ch = text[pos : pos + 1]
            if ch == '"':
                self.pos = pos + 1
                return "".join(parts)
            if not ch:
                raise _Syntax("unterminated string", start)
            if ch != "\\":
                raise _Syntax("control character or lone surrogate in string", pos)
            esc = text[pos + 1 : pos + 2]
            if esc in _ESCAPES:
                parts.append(_ESCAPES[esc])
                pos += 2
            elif esc == "u":
                char, pos = self.unicode_escape(pos)
                parts.append(char)
            else:
                raise _Syntax("invalid escape in string", pos)

    def unicode_escape(self, pos: int) -> tuple[str, int]:
        code = self.hex4(pos)
        if 0xDC00 <= code <= 0xDFFF:
            raise _Syntax("lone low surrogate escape in string", pos)
        if 0xD800 <= code <= 0xDBFF:
            if self.text[pos + 6 : pos + 8] != "\\u":
                raise _Syntax("lone high surrogate escape in string", pos)
            low = self.hex4(pos + 6)
            if not 0xDC00 <= low <= 0xDFFF:
                raise _Syntax("lone high surrogate escape in string", pos)
            return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), pos + 12
        return chr(code), pos + 6

    def hex4(self, pos: int) -> int:
        digits = self.text[pos + 2 : pos + 6]
        if len(digits) != 4 or not all(c in _HEX for c in digits):
            raise _Syntax("invalid \\u escape in string", pos)
        return int(digits, 16)

    def expect(self, ch: str, what: str) -> None:
        self.skip_ws()
        if self.text[self.pos : self.pos + 1] != ch:
            raise _Syntax(f"expected {what}", self.pos)
        self.pos += 1

    def obj(self, path: str, depth: int) -> dict[str, Any]:
        self.pos += 1
        result: dict[str, Any] = {}
        self.skip_ws()
        if self.text.startswith("}", self.pos):
            self.pos += 1
            return result
        while True:
            self.skip_ws()
            key_pos = self.pos
            if self.text[key_pos : key_pos + 1] != '"':
                raise _Syntax('expected a "quoted" field name', key_pos)
            key = self.string()
            sub = field_path(path, key)
            if key in result:
                self.duplicates.append((sub, key_pos))
            self.expect(":", "':' after the field name")
            self.skip_ws()
            result[key] = self.value(sub, depth + 1)
            self.skip_ws()
            ch = self.text[self.pos : self.pos + 1]
            self.pos += 1
            if ch == "}":
                return result
            if ch != ",":
                raise _Syntax("expected ',' or '}'", self.pos - 1)

    def array(self, path: str, depth: int) -> list[Any]:
        self.pos += 1
        result: list[Any] = []
        self.skip_ws()
        if self.text.startswith("]", self.pos):
            self.pos += 1
            return result
        while True:
            self.skip_ws()
            result.append(self.value(f"{path}[{len(result)}]", depth + 1))
            self.skip_ws()
            ch = self.text[self.pos : self.pos + 1]
            self.pos += 1
            if ch == "]":
                return result
            if ch != ",":
                raise _Syntax("expected ',' or ']'", self.pos - 1)
