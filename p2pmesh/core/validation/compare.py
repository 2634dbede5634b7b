"""Comparing the outputs of a job's replicas: are two packed output archives equivalent?

Theory of operation
-------------------
Each replica's ``/out`` folder comes back as the deterministic tar of ``p2pmesh.packing``. The
job's ``ValidationRule`` says what "the same result" means:

* ``exact``: the archives are canonical (a function of the folder's content), so two outputs
  agree exactly when their bytes are equal.
* ``numeric``: both archives must hold the same file names. A file whose path matches one of
  ``rule.files`` (all files when ``files`` is empty) and that is JSON, CSV or NumPy ``.npy``
  (by extension, any case) is compared **value by value**; every other file byte by byte.
  Two numbers ``x``, ``y`` agree when

      |x − y| ≤ abs_tol + rel_tol · max(|x|, |y|)

  like ``numpy.isclose`` but symmetric in ``x`` and ``y`` (numpy scales by ``|y|`` only), so
  ``equivalent(a, b)`` and ``equivalent(b, a)`` always agree. NaN agrees only with NaN and an
  infinity only with itself; ``0.0`` and ``-0.0`` agree. The check is computed in floating
  point, with an exact fallback where the floating-point terms overflow.

Globs follow docs/JOBS.md: matched against the path relative to ``/out``, part by part with
``fnmatch`` rules (``*``, ``?`` and ``[…]`` never cross a ``/``), and a whole part ``**`` matches
any number of parts. Matching is case-sensitive, so every node decides the same way.

Outputs come from untrusted workers, so ``equivalent`` treats both archives as hostile: a
malformed, oversized or otherwise surprising file is a *dissent* (``same=False`` with the reason),
never an exception, and the work is bounded (see the ``MAX_*`` limits; values are counted over
the whole comparison). Byte-identical files are always equivalent without being parsed, so the
limits only bite on files that actually differ.

``group_results`` clusters the replicas into groups of equivalent outputs for the verdict.
"""

from __future__ import annotations

import ast
import bisect
import csv
import io
import itertools
import json
import math
import operator
import struct
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from fractions import Fraction
from typing import Any

from p2pmesh.core.jobspec import ValidationRule
from p2pmesh.core.tarnames import member_kind, safe_parts, show_name
from p2pmesh.errors import PackingError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_CSV_ROWS",
    "MAX_FILES",
    "MAX_JSON_DEPTH",
    "MAX_NPY_HEADER_BYTES",
    "MAX_REORDER_SLICES",
    "MAX_VALUES",
    "Comparison",
    "equivalent",
    "group_results",
    "read_archive",
]

# Total file content an output archive may unpack to in memory.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# Entries (files plus directories) per archive: the same bound as packing.DEFAULT_MAX_FILES,
# repeated because the core may not import the I/O-bound packing module.
MAX_FILES = 10_000
# Values (JSON nodes, CSV cells, array elements) one comparison may examine, over all files.
MAX_VALUES = 10_000_000
MAX_JSON_DEPTH = 64
MAX_CSV_ROWS = 1_000_000
MAX_NPY_HEADER_BYTES = 64 * 1024
# numpy's own limit on dimensions is 32 (64 since numpy 2); more is not an array numpy wrote.
MAX_NPY_DIMS = 64
# Strided copies allowed to reorder one column-major array (see _to_c_order).
MAX_REORDER_SLICES = 1_000_000

# Values unpacked per step when walking arrays: large enough that struct does the work, small
# enough that two chunks of Python floats stay a few MiB.
_CHUNK = 1 << 16
_SHOWN_CHARS = 48
_TINY = 5e-324  # the smallest positive float
# How reasons name the two sides: the first and the second argument of ``equivalent``.
_A, _B = "archive a", "archive b"

# What tarfile raises on malformed input (the same list as p2pmesh.packing, which its fuzz test
# holds to account; tests/unit/test_compare.py fuzzes read_archive the same way).
_MALFORMED_TAR = (tarfile.TarError, EOFError, ValueError, UnicodeError, OverflowError)


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of comparing two outputs.

    ``files_compared`` counts the files examined (the dissenting one included); the diffs are the
    largest ``|x − y|`` and ``|x − y| / max(|x|, |y|)`` seen between differing finite numbers
    (0.0 when none differed), useful for tuning a job's tolerances.
    """

    same: bool
    reason: str
    files_compared: int = 0
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0


class _Dissent(Exception):
    """Raised deep in a file walk; ``equivalent`` turns it into ``same=False``."""


# --- reading archives ----------------------------------------------------------------------------


def read_archive(data: bytes, *, max_bytes: int, max_files: int) -> dict[str, bytes]:
    """Read a packed outputs archive from memory: relative path -> content, regular files only.

    Directory entries are accepted (``pack_dir`` writes them) and not returned. Empty ``data`` is
    an archive with no files.

    Raises:
        PackingError: the archive is malformed or truncated, has bytes after its end that are not
            zero padding, holds a link, device, FIFO or sparse member, an absolute, ``..``,
            non-normal, non-UTF-8, duplicate or clashing name (a file used as a directory), more
            than ``max_files`` entries, or more than ``max_bytes`` of file content.
    """
    if not data:
        return {}
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            # Iterating reads one header at a time, so a hostile member count stops at max_files.
            for count, member in enumerate(tar, start=1):
                if count > max_files:
                    raise PackingError(f"more than {max_files} entries")
                parts = safe_parts(member.name)
                name = "/".join(parts)
                if name in files or name in dirs:
                    raise PackingError(f"{show_name(name)}: duplicate entry")
                for i in range(1, len(parts)):
                    parent = "/".join(parts[:i])
                    if parent in files:
                        raise PackingError(f"{show_name(name)}: parent is a file")
                    dirs.add(parent)
                if member.isdir():
                    dirs.add(name)
                    continue
                if not member.isreg() or member.sparse is not None:
                    raise PackingError(f"{show_name(name)}: {member_kind(member)} not allowed")
                if member.size < 0:  # base-256 size fields can be negative
                    raise PackingError(f"{show_name(name)}: negative size")
                total += member.size
                if total > max_bytes:
                    raise PackingError(f"contents exceed {max_bytes} bytes")
                source = tar.extractfile(member)
                assert source is not None  # a regular member always has a file object
                content = source.read()
                if len(content) != member.size:
                    raise PackingError(f"{show_name(name)}: truncated")
                files[name] = content
            end = tar.offset
    except PackingError:
        raise
    except _MALFORMED_TAR as exc:
        raise PackingError(f"malformed archive: {exc}") from exc
    # tarfile stops quietly at the first bad header after the first member; only the end-of-
    # archive zero blocks may follow the last member, or two archives differing in trailing
    # garbage would read the same.
    if end > len(data) or data.count(0, end) != len(data) - end:
        raise PackingError(f"unexpected data after the end of the archive (offset {end})")
    return files


# --- comparing -----------------------------------------------------------------------------------


def equivalent(
    a: bytes, b: bytes, rule: ValidationRule, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> Comparison:
    """Compare two packed output archives under ``rule`` (see the module docstring).

    Never raises on any archive content: a malformed or oversized archive or file, or a limit
    reached, gives ``same=False`` with the reason.

    Raises:
        ValueError: ``rule`` has an unknown mode or a negative or non-finite tolerance (a
            programming error: checked specs never do).
    """
    if rule.mode == "exact":
        return _equivalent_exact(a, b, max_bytes)
    if rule.mode != "numeric":
        raise ValueError(f"unknown validation mode {rule.mode!r}")
    rel_tol, abs_tol = float(rule.rel_tol), float(rule.abs_tol)
    if not (math.isfinite(rel_tol) and math.isfinite(abs_tol) and rel_tol >= 0 and abs_tol >= 0):
        raise ValueError(f"tolerances must be finite and ≥ 0, got {rel_tol!r}, {abs_tol!r}")
    tally = _Tally(rel_tol=rel_tol, abs_tol=abs_tol)
    globs = tuple(rule.files) or ("**",)
    try:
        return _equivalent_numeric(a, b, globs, tally, max_bytes)
    except _Dissent as exc:
        return tally.result(False, str(exc))


def _equivalent_exact(a: bytes, b: bytes, max_bytes: int) -> Comparison:
    if a == b:
        return Comparison(same=True, reason="archives are byte-identical")
    return Comparison(same=False, reason=f"archives differ: {_first_difference(a, b, max_bytes)}")


def _first_difference(a: bytes, b: bytes, max_bytes: int) -> str:
    """Best-effort name of what differs, for the user; any archive problem is reported as is."""
    try:
        fa = read_archive(a, max_bytes=max_bytes, max_files=MAX_FILES)
    except PackingError as exc:
        return f"{_A} unreadable: {exc}"
    try:
        fb = read_archive(b, max_bytes=max_bytes, max_files=MAX_FILES)
    except PackingError as exc:
        return f"{_B} unreadable: {exc}"
    try:
        _same_names(fa, fb)
    except _Dissent as exc:
        return str(exc)
    for name in sorted(fa):
        if fa[name] != fb[name]:
            return f"{show_name(name)}: contents differ"
    return "same files, different archive metadata (modes or directories)"


def _equivalent_numeric(
    a: bytes, b: bytes, globs: tuple[str, ...], tally: _Tally, max_bytes: int
) -> Comparison:
    fa = _read_side(a, _A, max_bytes)
    fb = fa if a == b else _read_side(b, _B, max_bytes)
    _same_names(fa, fb)
    by_value = 0
    for name in sorted(fa):
        tally.files += 1
        x, y = fa[name], fb[name]
        if x == y:
            continue
        compare = _value_comparer(name, globs)
        if compare is None:
            raise _Dissent(f"{show_name(name)}: contents differ (compared exactly)")
        by_value += 1
        try:
            compare(x, y, tally)
        except _Dissent as exc:
            raise _Dissent(f"{show_name(name)}: {exc}") from None
    files = f"{tally.files} file{'' if tally.files == 1 else 's'}"
    if by_value:
        reason = f"{files} equivalent ({by_value} differing in bytes, compared by value)"
    else:
        reason = f"{files} identical"
    return tally.result(True, reason)


def _read_side(data: bytes, side: str, max_bytes: int) -> dict[str, bytes]:
    try:
        return read_archive(data, max_bytes=max_bytes, max_files=MAX_FILES)
    except PackingError as exc:
        raise _Dissent(f"{side} unreadable: {exc}") from None


def _same_names(fa: dict[str, bytes], fb: dict[str, bytes]) -> None:
    if fa.keys() == fb.keys():
        return
    only_a, only_b = sorted(fa.keys() - fb.keys()), sorted(fb.keys() - fa.keys())
    names, side = (only_a, _A) if only_a else (only_b, _B)
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    raise _Dissent(f"{show_name(names[0])}: only in {side}{more}")


def _value_comparer(
    name: str, globs: tuple[str, ...]
) -> Callable[[bytes, bytes, _Tally], None] | None:
    if not any(_glob_match(g, name) for g in globs):
        return None
    lower = name.lower()
    if lower.endswith(".json"):
        return _compare_json
    if lower.endswith(".csv"):
        return _compare_csv
    if lower.endswith(".npy"):
        return _compare_npy
    return None


def _glob_match(pattern: str, path: str) -> bool:
    """docs/JOBS.md globs: fnmatch per path part; a whole ``**`` part spans any number of parts.

    Tracks the set of path positions the pattern prefix can end at, so ``**`` never backtracks:
    O(pattern parts × path parts) fnmatch calls at most.
    """
    parts = path.split("/")
    reach = {0}
    for piece in pattern.split("/"):
        if piece == "**":
            reach = set(range(min(reach), len(parts) + 1))
        else:
            reach = {j + 1 for j in reach if j < len(parts) and fnmatchcase(parts[j], piece)}
        if not reach:
            return False
    return len(parts) in reach


class _Tally:
    """Tolerances, the value budget and the largest differences seen, for one comparison."""

    __slots__ = ("abs_tol", "budget", "files", "max_abs", "max_rel", "rel_tol")

    def __init__(self, *, rel_tol: float, abs_tol: float) -> None:
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol
        self.budget = MAX_VALUES
        self.files = 0
        self.max_abs = 0.0
        self.max_rel = 0.0

    def result(self, same: bool, reason: str) -> Comparison:
        return Comparison(
            same=same,
            reason=reason,
            files_compared=self.files,
            max_abs_diff=self.max_abs,
            max_rel_diff=self.max_rel,
        )

    def spend(self, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            raise _Dissent(f"more than {MAX_VALUES} values to compare")

    def numbers(
        self, xs: Sequence[float | int], ys: Sequence[float | int], where: Callable[[int], str]
    ) -> None:
        """Check two equally long sequences of numbers (no bools) pair by pair.

        Raises:
            _Dissent: at the first pair out of tolerance, named by ``where(index)``.
        """
        for start in range(0, len(xs), _CHUNK):
            # Chunks keep the fast path's temporary lists small.
            cx, cy = xs[start : start + _CHUNK], ys[start : start + _CHUNK]
            if cx == cy or self._all_close_fast(cx, cy):
                continue
            for i, (x, y) in enumerate(zip(cx, cy, strict=True), start=start):
                if x != y and not self.close(x, y):
                    raise _out_of_tolerance(where(i), x, y)

    def _all_close_fast(self, xs: Sequence[float | int], ys: Sequence[float | int]) -> bool:
        """The common case at C speed: every value finite and every pair within tolerance.

        The arithmetic is exactly that of ``close``, so both decide alike; False only means
        "look pair by pair" (a NaN, an infinity, an overflow, or a pair out of tolerance).
        """
        at, rt = self.abs_tol, self.rel_tol
        try:
            diffs = list(map(abs, map(operator.sub, xs, ys)))
            # A NaN or an infinity in a pair makes its diff NaN or inf, and a float sum stays
            # non-finite once any term is: a finite total means every pair is finite (a total
            # that merely overflows only sends us to the slow path).
            if not math.isfinite(sum(diffs)):
                return False
            worst = max(diffs)
            scales = list(map(max, map(abs, xs), map(abs, ys)))
            # The abs_tol test alone settles many chunks without a tolerance per pair.
            if worst > at:
                tols = map(at.__add__, map(rt.__mul__, scales))
                if any(map(operator.gt, diffs, tols)):
                    return False
            # A zero scale has a zero diff; the floor only avoids dividing by zero.
            rel = max(map(operator.truediv, diffs, map(max, scales, itertools.repeat(_TINY))))
        except OverflowError:  # ints beyond float range
            return False
        self._record(float(worst), rel)
        return True

    def close(self, x: float | int, y: float | int) -> bool:
        """Whether two unequal numbers (``x != y``, bools excluded) are within tolerance."""
        if x != x or y != y:  # NaN agrees only with NaN
            return x != x and y != y
        try:
            # Exact for two ints; a float otherwise (inf when the subtraction overflows).
            diff = abs(x - y)
            scale = max(abs(x), abs(y))
            fdiff, fscale = float(diff), float(scale)
        except OverflowError:  # an int beyond float range (JSON allows ~4300 digits)
            self._record(math.inf, math.inf)
            return self._exact_close(x, y)
        if math.isinf(fscale):  # an infinity against a different number
            return False
        tol = self.abs_tol + self.rel_tol * fscale
        self._record(fdiff, fdiff / fscale)
        if math.isfinite(fdiff) and math.isfinite(tol):
            return diff <= tol  # an int diff compares exactly with the float tolerance
        return self._exact_close(x, y)  # the float terms overflowed: decide on exact values

    def _record(self, diff: float, rel: float) -> None:
        self.max_abs = max(self.max_abs, diff)
        self.max_rel = max(self.max_rel, rel)

    def _exact_close(self, x: float | int, y: float | int) -> bool:
        if (isinstance(x, float) and not math.isfinite(x)) or (
            isinstance(y, float) and not math.isfinite(y)
        ):
            return False
        fx, fy = Fraction(x), Fraction(y)
        tol = Fraction(self.abs_tol) + Fraction(self.rel_tol) * max(abs(fx), abs(fy))
        return abs(fx - fy) <= tol


def _out_of_tolerance(where: str, x: object, y: object) -> _Dissent:
    return _Dissent(f"{where}: {_show_value(x)} vs {_show_value(y)} differ beyond tolerance")


# --- JSON ----------------------------------------------------------------------------------------


def _compare_json(a: bytes, b: bytes, tally: _Tally) -> None:
    x, y = _load_json(a, _A), _load_json(b, _B)
    _walk_json(x, y, "$", 0, tally)


def _load_json(raw: bytes, side: str) -> Any:
    # Every value but the top one follows a '[', ',' or ':', so this bounds the node count (a
    # character inside a string only over-counts) before json builds anything in memory.
    bound = raw.count(b",") + raw.count(b"[") + raw.count(b":") + 1
    if bound > MAX_VALUES:
        raise _Dissent(f"{side}: may hold more than {MAX_VALUES} JSON values")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Dissent(f"{side}: not UTF-8 text (byte {exc.start})") from None
    try:
        # Python's json accepts NaN and ±Infinity, which numeric writers emit; the C scanner
        # guards its recursion, so hostile nesting is a RecursionError, not a crash.
        return json.loads(text, object_pairs_hook=_json_object)
    except _Dissent as exc:
        raise _Dissent(f"{side}: {exc}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise _Dissent(f"{side}: malformed JSON: {_clip(str(exc))}") from None


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys would let two different documents parse to the same value.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Dissent(f"malformed JSON: duplicate key {_show_value(key)}")
        result[key] = value
    return result


def _walk_json(x: Any, y: Any, where: str, depth: int, tally: _Tally) -> None:
    if depth > MAX_JSON_DEPTH:
        raise _Dissent(f"{where}: nested deeper than {MAX_JSON_DEPTH}")
    tally.spend(1)
    tx, ty = _json_kind(x), _json_kind(y)
    if tx != ty:
        raise _Dissent(f"{where}: {tx} vs {ty}")
    if tx == "object":
        if x.keys() != y.keys():
            missing = sorted(x.keys() ^ y.keys())[0]
            side = _A if missing in x else _B
            raise _Dissent(f"{where}: key {_show_value(missing)} only in {side}")
        for key in sorted(x):
            _walk_json(x[key], y[key], f"{where}[{_show_value(key)}]", depth + 1, tally)
    elif tx == "array":
        if len(x) != len(y):
            raise _Dissent(f"{where}: {len(x)} vs {len(y)} elements")
        if _NUMBER_TYPES.issuperset(map(type, x)) and _NUMBER_TYPES.issuperset(map(type, y)):
            # A flat array of numbers (the bulk of numeric output) in one pass, at C speed.
            tally.spend(len(x))
            tally.numbers(x, y, lambda i: f"{where}[{i}]")
            return
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _walk_json(u, v, f"{where}[{i}]", depth + 1, tally)
    elif tx == "number":
        if x != y and not tally.close(x, y):
            raise _out_of_tolerance(where, x, y)
    elif x != y:  # strings, booleans, null: exact
        raise _Dissent(f"{where}: {_show_value(x)} vs {_show_value(y)}")


# Exact types: json builds no subclasses, and bool (an int subclass) is not a number here.
_NUMBER_TYPES = frozenset({int, float})


def _json_kind(v: Any) -> str:
    # bool before number: True is an int to Python but not a number to JSON.
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if v is None:
        return "null"
    if isinstance(v, list):
        return "array"
    return "object"


# --- CSV -----------------------------------------------------------------------------------------


def _compare_csv(a: bytes, b: bytes, tally: _Tally) -> None:
    rows_a, rows_b = _csv_rows(a, _A), _csv_rows(b, _B)
    batch = _CsvBatch(tally)
    try:
        for row in itertools.count(1):
            x, y = next(rows_a, None), next(rows_b, None)
            if x is None and y is None:
                break
            if row > MAX_CSV_ROWS:
                raise _Dissent(f"more than {MAX_CSV_ROWS} rows")
            if x is None or y is None:
                raise _Dissent(f"row {row}: only in {_A if y is None else _B}")
            if len(x) != len(y):
                raise _Dissent(f"row {row}: {len(x)} vs {len(y)} columns")
            tally.spend(len(x))
            if x != y:
                _compare_csv_row(x, y, row, batch)
        batch.flush()
    except csv.Error as exc:
        raise _Dissent(f"malformed CSV: {_clip(str(exc))}") from None


def _csv_rows(raw: bytes, side: str) -> Iterator[list[str]]:
    # A row's cells are all built before the reader returns it; bounding the separators first
    # keeps one hostile row from taking memory for more cells than the whole budget.
    if raw.count(b",") > MAX_VALUES:
        raise _Dissent(f"{side}: may hold more than {MAX_VALUES} CSV cells")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Dissent(f"{side}: not UTF-8 text (byte {exc.start})") from None
    return csv.reader(io.StringIO(text, newline=""))


class _CsvBatch:
    """Numeric cells of differing rows, checked a chunk at a time.

    Rows are short, so one fast-path pass per row would cost more than the comparison itself.
    """

    def __init__(self, tally: _Tally) -> None:
        self.tally = tally
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.rows: list[tuple[int, int]] = []  # (first index in xs, row number)

    def add(self, row: int, xs: list[float], ys: list[float]) -> None:
        self.rows.append((len(self.xs), row))
        self.xs += xs
        self.ys += ys
        if len(self.xs) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        xs, ys, rows = self.xs, self.ys, self.rows
        self.xs, self.ys, self.rows = [], [], []
        starts = [first for first, _ in rows]

        def where(i: int) -> str:
            first, row = rows[bisect.bisect_right(starts, i) - 1]
            return f"row {row}, column {i - first + 1}"

        self.tally.numbers(xs, ys, where)


def _compare_csv_row(x: list[str], y: list[str], row: int, batch: _CsvBatch) -> None:
    try:
        fx, fy = list(map(float, x)), list(map(float, y))
    except ValueError:
        pass  # some cell is text: go cell by cell
    else:
        batch.add(row, fx, fy)
        return
    # Earlier rows first, so the reason names the first difference in the file.
    batch.flush()
    for col, (u, v) in enumerate(zip(x, y, strict=True), start=1):
        if u == v:
            continue
        fu, fv = _float_or_none(u), _float_or_none(v)
        if fu is None or fv is None:
            raise _Dissent(f"row {row}, column {col}: {_show_value(u)} vs {_show_value(v)}")
        if fu != fv and not batch.tally.close(fu, fv):
            raise _out_of_tolerance(f"row {row}, column {col}", fu, fv)


def _float_or_none(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


# --- NumPy .npy ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _DType:
    kind: str  # "f", "i", "u" or "b" (bool)
    code: str  # struct format character
    order: str  # struct byte-order prefix
    size: int


def _dtypes() -> dict[str, _DType]:
    table: dict[str, _DType] = {}
    codes = {
        "f8": "d", "f4": "f", "f2": "e",
        "i8": "q", "i4": "i", "i2": "h", "i1": "b",
        "u8": "Q", "u4": "I", "u2": "H", "u1": "B",
    }  # fmt: skip
    for order in "<>":
        for name, code in codes.items():
            table[order + name] = _DType(name[0], code, order, int(name[1]))
    # numpy writes single-byte types with '|' (byte order does not apply).
    table["|b1"] = _DType("b", "?", "<", 1)
    table["|u1"] = _DType("u", "B", "<", 1)
    table["|i1"] = _DType("i", "b", "<", 1)
    return table


_NPY_DTYPES = _dtypes()
_NPY_MAGIC = b"\x93NUMPY"
_NPY_KEYS = frozenset({"descr", "fortran_order", "shape"})
# Unsigned struct codes by item size: reordering elements only moves whole items.
_RAW_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
_KIND_NAMES = {"f": "float", "i": "signed int", "u": "unsigned int", "b": "bool"}


@dataclass(frozen=True, slots=True)
class _Npy:
    dtype: _DType
    shape: tuple[int, ...]
    count: int
    fortran: bool  # the layout of ``data``: column-major, else row-major
    data: memoryview


def _compare_npy(a: bytes, b: bytes, tally: _Tally) -> None:
    x, y = _parse_npy(a, _A), _parse_npy(b, _B)
    if x.shape != y.shape:
        raise _Dissent(f"shape {_show_shape(x.shape)} vs {_show_shape(y.shape)}")
    if x.dtype.kind != y.dtype.kind:
        raise _Dissent(f"dtype {_KIND_NAMES[x.dtype.kind]} vs {_KIND_NAMES[y.dtype.kind]}")
    tally.spend(x.count)
    # Same layout on both sides (the usual case): walk both in storage order, no copy.
    if x.fortran != y.fortran and _layout_matters(x.shape):
        x, y = _to_c_order(x), _to_c_order(y)
    for start in range(0, x.count, _CHUNK):
        n = min(_CHUNK, x.count - start)
        xs, ys = _unpack(x, start, n), _unpack(y, start, n)
        if xs == ys:
            continue

        def where(i: int, start: int = start) -> str:
            return f"element {_show_index(start + i, x.shape, fortran=x.fortran)}"

        if x.dtype.kind == "b":
            i = next(i for i, (u, v) in enumerate(zip(xs, ys, strict=True)) if u != v)
            raise _Dissent(f"{where(i)}: {xs[i]} vs {ys[i]}")
        tally.numbers(xs, ys, where)


def _unpack(arr: _Npy, start: int, n: int) -> tuple[Any, ...]:
    dt = arr.dtype
    return struct.unpack_from(f"{dt.order}{n}{dt.code}", arr.data, start * dt.size)


def _parse_npy(raw: bytes, side: str) -> _Npy:
    """Read an .npy file (format versions 1.0, 2.0, 3.0) without numpy."""
    if len(raw) < 10 or raw[:6] != _NPY_MAGIC:
        raise _Dissent(f"{side}: not an .npy file (bad magic)")
    version = (raw[6], raw[7])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise _Dissent(f"{side}: unsupported .npy version {version[0]}.{version[1]}")
    if version[0] == 1:
        (header_len,), start = struct.unpack_from("<H", raw, 8), 10
    elif len(raw) < 12:
        raise _Dissent(f"{side}: truncated .npy header")
    else:
        (header_len,), start = struct.unpack_from("<I", raw, 8), 12
    if header_len > MAX_NPY_HEADER_BYTES:
        raise _Dissent(f"{side}: .npy header of {header_len} bytes (limit {MAX_NPY_HEADER_BYTES})")
    end = start + header_len
    if end > len(raw):
        raise _Dissent(f"{side}: truncated .npy header")
    try:
        header = raw[start:end].decode("utf-8" if version[0] == 3 else "latin-1")
    except UnicodeDecodeError:
        raise _Dissent(f"{side}: .npy header is not UTF-8") from None
    fields = _npy_header(header, side)
    dtype = _NPY_DTYPES.get(fields["descr"]) if isinstance(fields["descr"], str) else None
    if dtype is None:
        raise _Dissent(f"{side}: unsupported .npy dtype {_show_value(fields['descr'])}")
    fortran, shape = fields["fortran_order"], fields["shape"]
    if not isinstance(fortran, bool):
        raise _Dissent(f"{side}: .npy fortran_order is not a bool")
    if (
        not isinstance(shape, tuple)
        or len(shape) > MAX_NPY_DIMS
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise _Dissent(f"{side}: bad .npy shape {_show_value(shape)}")
    count = math.prod(shape)
    if count > MAX_VALUES:
        raise _Dissent(f"{side}: shape {_show_shape(shape)} holds more than {MAX_VALUES} values")
    data = memoryview(raw)[end:]
    if len(data) != count * dtype.size:
        raise _Dissent(
            f"{side}: .npy data is {len(data)} bytes, shape and dtype need {count * dtype.size}"
        )
    return _Npy(dtype=dtype, shape=shape, count=count, fortran=fortran, data=data)


def _npy_header(header: str, side: str) -> dict[str, Any]:
    # A plain header has one dict and one shape tuple; refusing more brackets before
    # literal_eval keeps hostile nesting away from the parser's recursion.
    if header.count("{") + header.count("(") + header.count("[") > 2:
        raise _Dissent(f"{side}: unsupported .npy header (structured dtype or not a plain dict)")
    try:
        fields = ast.literal_eval(header)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _Dissent(f"{side}: malformed .npy header") from None
    if not isinstance(fields, dict) or fields.keys() != _NPY_KEYS:
        raise _Dissent(f"{side}: .npy header must hold exactly descr, fortran_order and shape")
    return fields


def _layout_matters(shape: tuple[int, ...]) -> bool:
    # Axes of length 1 do not move elements; with at most one longer axis, or no elements,
    # row- and column-major storage are the same bytes.
    dims = [d for d in shape if d != 1]
    return len(dims) > 1 and 0 not in dims


def _to_c_order(arr: _Npy) -> _Npy:
    """Reorder a column-major array's elements into row-major order (a copy).

    Along the longest axis, each run of elements is one strided slice on both sides, so Python
    steps only over the other axes: count / longest-axis slices, capped at MAX_REORDER_SLICES
    (only absurd shapes, like twenty axes of length 2, get near it).
    """
    if not arr.fortran:
        return arr
    dims = [d for d in arr.shape if d != 1]
    n = len(dims)
    axis = max(range(n), key=lambda k: dims[k])
    length = dims[axis]
    steps = arr.count // length
    if steps > MAX_REORDER_SLICES:
        raise _Dissent(
            f"shape {_show_shape(arr.shape)} needs {steps} steps to reorder from column-major "
            f"(limit {MAX_REORDER_SLICES}); write both outputs in the same order"
        )
    code = _RAW_CODES[arr.dtype.size]
    src = arr.data.cast(code)
    out = bytearray(len(arr.data))
    dst = memoryview(out).cast(code)
    f_strides = [math.prod(dims[:k]) for k in range(n)]
    c_strides = [math.prod(dims[k + 1 :]) for k in range(n)]
    fs, cs = f_strides[axis], c_strides[axis]
    others = [k for k in range(n) if k != axis]
    index = [0] * len(others)
    bf = bc = 0  # where the current run starts, column- and row-major
    for _ in range(steps):
        dst[bc : bc + cs * (length - 1) + 1 : cs] = src[bf : bf + fs * (length - 1) + 1 : fs]
        # Advance the other axes like an odometer, keeping both offsets in step.
        for j in range(len(others) - 1, -1, -1):
            k = others[j]
            index[j] += 1
            bf += f_strides[k]
            bc += c_strides[k]
            if index[j] < dims[k]:
                break
            index[j] = 0
            bf -= f_strides[k] * dims[k]
            bc -= c_strides[k] * dims[k]
    return _Npy(
        dtype=arr.dtype, shape=arr.shape, count=arr.count, fortran=False, data=dst.cast("B")
    )


# --- grouping ------------------------------------------------------------------------------------


def group_results(outputs: dict[str, bytes], rule: ValidationRule) -> list[list[str]]:
    """Cluster workers whose outputs are equivalent under ``rule``.

    Workers are taken in sorted order; each joins the first group whose first member's output
    it is equivalent to, or starts a new group. (Numeric equivalence is not transitive, so the
    representative is fixed rather than "any member".) Groups come largest first, ties by
    smallest worker id; members are sorted. The result depends only on the contents of
    ``outputs``, not on its order.
    """
    groups: list[list[str]] = []
    for worker in sorted(outputs):
        for group in groups:
            if equivalent(outputs[group[0]], outputs[worker], rule).same:
                group.append(worker)
                break
        else:
            groups.append([worker])
    groups.sort(key=lambda g: (-len(g), g[0]))
    return groups


# --- showing values in reasons -------------------------------------------------------------------


def _clip(text: str) -> str:
    return text if len(text) <= 2 * _SHOWN_CHARS else text[: 2 * _SHOWN_CHARS] + "…"


def _show_value(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**_SHOWN_CHARS:
        return f"an integer of {len(str(abs(value)))} digits"
    shown = repr(value)
    return shown if len(shown) <= _SHOWN_CHARS else shown[:_SHOWN_CHARS] + "…"


def _show_shape(shape: tuple[int, ...]) -> str:
    dims = [str(d) if d < 10**18 else "≥1e18" for d in shape[:8]]
    if len(shape) > 8:
        dims.append(f"… {len(shape)} dims")
    return "(" + ", ".join(dims) + ("," if len(shape) == 1 else "") + ")"


def _show_index(flat: int, shape: tuple[int, ...], *, fortran: bool) -> str:
    """The multi-index of the ``flat``-th stored element."""
    index = []
    for d in shape if fortran else reversed(shape):
        flat, i = divmod(flat, d)
        index.append(i)
    return "[" + ", ".join(map(str, index if fortran else reversed(index))) + "]"
