"""Tests for p2pmesh/core/validation/compare.py: replica output comparison.

Properties: equivalence is reflexive and symmetric, exact mode is byte equality, numeric mode
accepts exactly the pairs within tolerance (checked against an exact ``Fraction`` oracle), and
no hostile archive or file makes ``equivalent`` raise or ``read_archive`` raise anything but
``PackingError``. Every .npy file here is written with ``struct``; numpy, when installed, only
cross-checks the reader in one test.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import random
import struct
import tarfile
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from p2pmesh.core.jobspec import ValidationRule
from p2pmesh.core.validation.compare import (
    MAX_VALUES,
    Comparison,
    equivalent,
    group_results,
    read_archive,
)
from p2pmesh.errors import PackingError
from p2pmesh.packing import pack_dir

EXACT = ValidationRule()
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def numeric(rel: float = 0.0, abs_: float = 0.0, files: tuple[str, ...] = ()) -> ValidationRule:
    return ValidationRule(mode="numeric", rel_tol=rel, abs_tol=abs_, files=files)


# --- building archives and files -----------------------------------------------------------------


def tar_of(files: dict[str, bytes], dirs: tuple[str, ...] = ()) -> bytes:
    """An archive laid out like pack_dir's: sorted entries, zeroed metadata, PAX format."""
    buf = io.BytesIO()
    entries = sorted([(d, None) for d in dirs] + list(files.items()))
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def one(name: str, content: bytes) -> bytes:
    return tar_of({name: content})


STRUCT_CODES = {"f": {8: "d", 4: "f", 2: "e"}, "i": {8: "q", 4: "i", 2: "h", 1: "b"}}
STRUCT_CODES["u"] = {8: "Q", 4: "I", 2: "H", 1: "B"}
STRUCT_CODES["b"] = {1: "?"}


def c_to_f(values: list, shape: tuple[int, ...]) -> list:
    """Column-major order of row-major ``values``: the first index varies fastest."""
    strides = [math.prod(shape[k + 1 :]) for k in range(len(shape))]
    out = []
    for rev in itertools.product(*(range(d) for d in reversed(shape))):
        index = rev[::-1]
        out.append(values[sum(i * s for i, s in zip(index, strides, strict=True))])
    return out


def npy(
    values: list,
    shape: tuple[int, ...],
    descr: str = "<f8",
    *,
    fortran: bool = False,
    version: tuple[int, int] = (1, 0),
) -> bytes:
    """An .npy file written like numpy.save does, with ``values`` given in row-major order."""
    order = ">" if descr[0] == ">" else "<"
    code = STRUCT_CODES[descr[1]][int(descr[2:])]
    stored = c_to_f(values, shape) if fortran else values
    data = struct.pack(f"{order}{len(stored)}{code}", *stored)
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {tuple(shape)!r}, }}"
    prefix = 10 if version[0] == 1 else 12
    header += " " * (-(prefix + len(header) + 1) % 64) + "\n"
    encoded = header.encode("utf-8" if version[0] == 3 else "latin-1")
    size = struct.pack("<H" if version[0] == 1 else "<I", len(encoded))
    return b"\x93NUMPY" + bytes(version) + size + encoded + data


def npy_raw(header: str, data: bytes = b"", version: int = 1) -> bytes:
    encoded = header.encode("latin-1")
    size = struct.pack("<H" if version == 1 else "<I", len(encoded))
    return b"\x93NUMPY" + bytes([version, 0]) + size + encoded + data


def csv_of(rows: list[list]) -> bytes:
    return "".join(",".join(map(repr, r)) + "\n" for r in rows).encode()


# --- strategies ----------------------------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
any_float = st.floats(allow_nan=True, allow_infinity=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | any_float | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=5), kids, max_size=5)
    ),
    max_leaves=20,
)
descrs = st.sampled_from(
    [f"{o}{k}" for o in "<>" for k in ("f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4")]
    + ["<u2", ">u2", "|u1", "|i1", "|b1"]
)
shapes = st.lists(st.integers(0, 4), max_size=4).map(tuple)


@st.composite
def npy_files(draw: st.DrawFn) -> bytes:
    descr, shape = draw(descrs), draw(shapes)
    values = draw(
        st.lists(dtype_values(descr), min_size=math.prod(shape), max_size=math.prod(shape))
    )
    return npy(
        values,
        shape,
        descr,
        fortran=draw(st.booleans()),
        version=draw(st.sampled_from([(1, 0), (2, 0), (3, 0)])),
    )


def dtype_values(descr: str) -> st.SearchStrategy:
    kind, size = descr[1], int(descr[2:])
    if kind == "f":
        return st.floats(width=8 * size)  # type: ignore[arg-type]
    if kind == "b":
        return st.booleans()
    if kind == "u":
        return st.integers(0, 2 ** (8 * size) - 1)
    return st.integers(-(2 ** (8 * size - 1)), 2 ** (8 * size - 1) - 1)


file_names = st.text(alphabet="abc", min_size=1, max_size=3)
output_files = st.dictionaries(
    file_names.map(lambda n: f"out/{n}"),
    st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.lists(st.lists(finite, min_size=2, max_size=2), max_size=4).map(csv_of),
        npy_files(),
        st.binary(max_size=40),
    ),
    max_size=4,
).map(
    lambda d: {
        n + ext: c for (n, c), ext in zip(d.items(), itertools.cycle(["", ".json", ".csv", ".npy"]))
    }
)


# --- archives ------------------------------------------------------------------------------------


def test_read_archive_of_pack_dir(tmp_path: Path) -> None:
    (tmp_path / "src" / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "src" / "empty").mkdir()
    (tmp_path / "src" / "a.json").write_bytes(b"[1, 2]")
    (tmp_path / "src" / "sub" / "deep" / "b.bin").write_bytes(b"\x00\x01")
    data = pack_dir(tmp_path / "src", max_bytes=1 << 20)
    assert read_archive(data, max_bytes=1 << 20, max_files=10) == {
        "a.json": b"[1, 2]",
        "sub/deep/b.bin": b"\x00\x01",
    }
    assert equivalent(data, data, numeric()).files_compared == 2
    assert (
        read_archive(
            pack_dir(tmp_path / "src" / "empty", max_bytes=1 << 20), max_bytes=1, max_files=1
        )
        == {}
    )


def test_read_archive_empty_bytes() -> None:
    assert read_archive(b"", max_bytes=0, max_files=0) == {}


def hostile_tar(name: str, kind: bytes, content: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = "../../etc/passwd"
        if kind == tarfile.REGTYPE:
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        else:
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (hostile_tar("link", tarfile.SYMTYPE), "symbolic link"),
        (hostile_tar("hard", tarfile.LNKTYPE), "hard link"),
        (hostile_tar("dev", tarfile.CHRTYPE), "device"),
        (hostile_tar("fifo", tarfile.FIFOTYPE), "device or FIFO"),
        (hostile_tar("/etc/passwd", tarfile.REGTYPE), "absolute"),
        (hostile_tar("a/../../b", tarfile.REGTYPE), "'..'"),
        (hostile_tar("a//b", tarfile.REGTYPE), "normal form"),
        (hostile_tar("./a", tarfile.REGTYPE), "normal form"),
        (tar_of({"a": b"1"}) + tar_of({"a": b"2"}), "unexpected data"),
        (tar_of({"a": b"1"})[:600], "malformed"),
        (tar_of({"a": b"1"}) + b"garbage", "unexpected data"),
        (b"not a tar at all" * 40, "malformed"),
    ],
)
def test_read_archive_refusals(data: bytes, message: str) -> None:
    with pytest.raises(PackingError, match=message):
        read_archive(data, max_bytes=1 << 20, max_files=100)


def test_read_archive_duplicates_and_clashes() -> None:
    def raw(*members: tuple[str, bytes | None]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, content in members:
                info = tarfile.TarInfo(name)
                if content is None:
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))
        return buf.getvalue()

    for data, message in [
        (raw(("a", b"1"), ("a", b"2")), "duplicate"),
        (raw(("a", None), ("a", b"2")), "duplicate"),
        (raw(("a", b"1"), ("a/b", b"2")), "parent is a file"),
        (raw(("a/b", b"1"), ("a", b"2")), "duplicate"),
    ]:
        with pytest.raises(PackingError, match=message):
            read_archive(data, max_bytes=100, max_files=100)
    assert read_archive(raw(("a", None), ("a/b", b"1")), max_bytes=1, max_files=2) == {"a/b": b"1"}


def test_read_archive_limits() -> None:
    data = tar_of({"a": b"12345", "b": b"6789"}, dirs=("d",))
    assert len(read_archive(data, max_bytes=9, max_files=3)) == 2
    with pytest.raises(PackingError, match="exceed 8 bytes"):
        read_archive(data, max_bytes=8, max_files=3)
    with pytest.raises(PackingError, match="more than 2 entries"):
        read_archive(data, max_bytes=9, max_files=2)


def check_read_archive(data: bytes) -> None:
    try:
        files = read_archive(data, max_bytes=4096, max_files=8)
    except PackingError:
        return
    assert sum(map(len, files.values())) <= 4096
    for name in files:
        assert name and not name.startswith("/") and ".." not in name.split("/")


@FUZZ
@given(data=st.binary(max_size=3000))
def test_read_archive_random_bytes(data: bytes) -> None:
    check_read_archive(data)


_SEED = tar_of(
    {"dir/file.json": b"[1.5, 2]" * 30, "long/" + "n" * 150: b"pax", "x": b""}, dirs=("dir",)
)


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, len(_SEED) - 1), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, len(_SEED)),
)
def test_read_archive_mutated(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_SEED)
    for pos, value in flips:
        data[pos] = value
    mutated = bytes(data[:cut]) if cut % 3 == 0 else bytes(data)
    check_read_archive(mutated)
    # The same hostile bytes are only ever a dissent for equivalent.
    result = equivalent(_SEED, mutated, numeric(1e-3))
    assert isinstance(result, Comparison) and result.reason


@FUZZ
@given(
    members=st.lists(
        st.tuples(
            st.lists(
                st.sampled_from(["a", "b", "..", ".", "", "/", "\x00", "é"]), min_size=1, max_size=4
            ).map("/".join),
            st.sampled_from(
                [
                    tarfile.REGTYPE,
                    tarfile.AREGTYPE,
                    tarfile.DIRTYPE,
                    tarfile.SYMTYPE,
                    tarfile.LNKTYPE,
                    tarfile.CHRTYPE,
                    tarfile.FIFOTYPE,
                    tarfile.CONTTYPE,
                    tarfile.GNUTYPE_SPARSE,
                    b"X",
                ]
            ),
            st.binary(max_size=50),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_read_archive_hostile_members(members: list[tuple[str, bytes, bytes]]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, content in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            try:
                if kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))
                else:
                    tar.addfile(info)
            except (ValueError, tarfile.TarError):
                continue  # tarfile itself refuses to write this header
    check_read_archive(buf.getvalue())


# --- general properties --------------------------------------------------------------------------


@PROPS
@given(files=output_files, rel=st.sampled_from([0.0, 1e-6]))
def test_equivalence_is_reflexive(files: dict[str, bytes], rel: float) -> None:
    data = tar_of(files)
    for rule in (EXACT, numeric(rel), numeric(rel, files=("**/*.json",))):
        result = equivalent(data, data, rule)
        assert result.same, result.reason
        assert (result.max_abs_diff, result.max_rel_diff) == (0.0, 0.0)
    assert equivalent(data, data, numeric()).files_compared == len(files)


@PROPS
@given(fa=output_files, fb=output_files)
def test_exact_mode_is_byte_equality(fa: dict[str, bytes], fb: dict[str, bytes]) -> None:
    a, b = tar_of(fa), tar_of(fb)
    result = equivalent(a, b, EXACT)
    assert result.same == (a == b)
    assert result.reason
    # Numeric mode is never stricter than exact mode.
    if result.same:
        assert equivalent(a, b, numeric()).same


@PROPS
@given(a=st.binary(max_size=200), b=st.binary(max_size=200))
def test_exact_mode_on_any_bytes(a: bytes, b: bytes) -> None:
    assert equivalent(a, b, EXACT).same == (a == b)
    assert equivalent(a, a, EXACT).same


@PROPS
@given(fa=output_files, fb=output_files, rel=st.sampled_from([0.0, 1e-3, 0.5]))
def test_numeric_mode_is_symmetric(fa: dict[str, bytes], fb: dict[str, bytes], rel: float) -> None:
    a, b = tar_of(fa), tar_of(fb)
    rule = numeric(rel, rel)
    assert equivalent(a, b, rule).same == equivalent(b, a, rule).same


# --- numeric tolerance ---------------------------------------------------------------------------

tolerances = st.tuples(
    st.sampled_from([0.0, 1e-9, 1e-6, 1e-3, 0.1]), st.sampled_from([1e-6, 1e-3, 1.0])
)


def inside(x: float, rel: float, abs_: float, sign: int) -> float:
    return x + sign * 0.5 * (abs_ + rel * abs(x))


def outside(x: float, rel: float, abs_: float, sign: int) -> float:
    # |y| ≤ |x| + D and D·(1 − rel) ≥ 2.7·(abs + rel·|x|) > abs + rel·max(|x|, |y|) for rel ≤ 0.1.
    return x + sign * 3 * (abs_ + rel * abs(x))


@PROPS
@given(
    xs=st.lists(finite, min_size=1, max_size=30),
    signs=st.lists(st.sampled_from([-1, 1]), min_size=30, max_size=30),
    tol=tolerances,
    bad=st.integers(0, 29),
    fmt=st.sampled_from(["json", "csv", "npy"]),
)
def test_numeric_tolerance(
    xs: list[float], signs: list[int], tol: tuple[float, float], bad: int, fmt: str
) -> None:
    rel, abs_ = tol
    ys = [inside(x, rel, abs_, s) for x, s in zip(xs, signs, strict=False)]
    bad %= len(xs)
    zs = list(ys)
    zs[bad] = outside(xs[bad], rel, abs_, signs[bad])

    def encode(values: list[float]) -> bytes:
        if fmt == "json":
            return json.dumps({"values": values, "label": "run"}).encode()
        if fmt == "csv":
            return csv_of([["x"]] + [[v] for v in values]).replace(b"'", b"")
        return npy(values, (len(values),))

    name = f"r.{fmt}"
    a, b, c = one(name, encode(xs)), one(name, encode(ys)), one(name, encode(zs))
    rule = numeric(rel, abs_)
    ok = equivalent(a, b, rule)
    assert ok.same, ok.reason
    assert ok.max_abs_diff <= abs_ + rel * 1e6
    dissent = equivalent(a, c, rule)
    assert not dissent.same
    assert dissent.reason.startswith(f"{name}: ") and "beyond tolerance" in dissent.reason
    where = {
        "json": f"$['values'][{bad}]",
        "csv": f"row {bad + 2}, column 1",
        "npy": f"element [{bad}]",
    }
    assert where[fmt] in dissent.reason
    assert dissent.max_abs_diff > 0


def oracle_close(
    x: float | int | bool, y: float | int | bool, rel: float, abs_: float
) -> bool | None:
    """The rule exactly, in rationals; None where float rounding may legitimately decide."""
    if x == y:
        return True
    if isinstance(x, bool):
        return False
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if math.isinf(x) or math.isinf(y):
        return False
    fx, fy = Fraction(x), Fraction(y)
    lhs = abs(fx - fy)
    rhs = Fraction(abs_) + Fraction(rel) * max(abs(fx), abs(fy))
    if abs(lhs - rhs) <= Fraction(1, 10**9) * max(lhs, rhs):
        return None
    return lhs <= rhs


def stored(values: list, descr: str) -> list:
    """What the file actually holds: values rounded through the dtype."""
    order = ">" if descr[0] == ">" else "<"
    code = STRUCT_CODES[descr[1]][int(descr[2:])]
    return list(
        struct.unpack(
            f"{order}{len(values)}{code}", struct.pack(f"{order}{len(values)}{code}", *values)
        )
    )


@PROPS
@given(
    data=st.data(),
    descr_a=descrs,
    descr_b=descrs,
    shape=shapes,
    tol=tolerances,
    orders=st.tuples(st.booleans(), st.booleans()),
)
def test_npy_matches_oracle(
    data: st.DataObject,
    descr_a: str,
    descr_b: str,
    shape: tuple[int, ...],
    tol: tuple[float, float],
    orders: tuple[bool, bool],
) -> None:
    # Same kind on both sides (a different kind is a dissent, tested below); sizes may differ.
    descr_b = descr_b if descr_a[1] == descr_b[1] else descr_a
    count = math.prod(shape)
    xs = stored(data.draw(st.lists(dtype_values(descr_a), min_size=count, max_size=count)), descr_a)
    noise = data.draw(
        st.lists(st.sampled_from([0, 0, 1e-9, -1e-7, 1e-4, 0.3, 2]), min_size=count, max_size=count)
    )
    ys = []
    for x, k in zip(xs, noise, strict=True):
        if descr_b[1] == "f":
            y = x + x * k if math.isfinite(x) else x
        elif descr_b[1] == "b":
            y = x if k == 0 else not x
        else:
            y = int(x + x * k) if k != 2 else x + 1
        ys.append(y)
    ys = stored([_clamp(y, descr_b) for y in ys], descr_b)
    rel, abs_ = tol
    verdicts = [oracle_close(x, y, rel, abs_) for x, y in zip(xs, ys, strict=True)]
    assume(None not in verdicts)
    a = one("m.npy", npy(xs, shape, descr_a, fortran=orders[0]))
    b = one("m.npy", npy(ys, shape, descr_b, fortran=orders[1]))
    result = equivalent(a, b, numeric(rel, abs_))
    assert result.same == all(verdicts), (result.reason, xs, ys)
    if not result.same:
        first = verdicts.index(False)
        strides = [math.prod(shape[k + 1 :]) for k in range(len(shape))]
        index = [first // s % d for s, d in zip(strides, shape, strict=True)]
        if orders[0] == orders[1] and orders[0]:
            assert "m.npy: element [" in result.reason  # walked in storage order
        else:
            assert f"element {index}" in result.reason, result.reason


def _clamp(y: float | int | bool, descr: str) -> float | int | bool:
    kind, size = descr[1], int(descr[2:])
    if kind == "f":
        limit = {8: 1.7e308, 4: 3.4e38, 2: 65504.0}[size]
        return y if not math.isfinite(y) else max(-limit, min(limit, y))
    if kind == "b":
        return bool(y)
    lo, hi = (
        (0, 2 ** (8 * size) - 1)
        if kind == "u"
        else (-(2 ** (8 * size - 1)), 2 ** (8 * size - 1) - 1)
    )
    return max(lo, min(hi, int(y)))


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("x", "y", "same"),
    [
        (NAN, NAN, True),
        (NAN, 1.0, False),
        (1.0, NAN, False),
        (INF, INF, True),
        (-INF, -INF, True),
        (INF, -INF, False),
        (INF, 1e308, False),
        (0.0, -0.0, True),
        (1e308, -1e308, False),
        (1.0, 1.0 + 1e-12, True),
        (1.0, 1.1, False),
    ],
)
@pytest.mark.parametrize("fmt", ["json", "csv", "npy"])
def test_special_values(x: float, y: float, same: bool, fmt: str) -> None:
    def encode(v: float) -> bytes:
        if fmt == "json":
            return json.dumps([v]).encode()
        if fmt == "csv":
            return f"{v!r}\n".encode()
        return npy([v], (1,))

    result = equivalent(
        one(f"v.{fmt}", encode(x)), one(f"v.{fmt}", encode(y)), numeric(1e-9, 1e-12)
    )
    assert result.same is same, result.reason


def test_overflowing_terms_use_exact_arithmetic() -> None:
    big = 1.7e308
    rule = numeric(1.0, 1e308)  # abs + rel·max overflows a float
    assert not equivalent(one("v.json", b"[1.7e308]"), one("v.json", b"[-1.7e308]"), rule).same
    assert equivalent(one("v.json", f"[{big!r}]".encode()), one("v.json", b"[1e308]"), rule).same
    # Integers beyond float range (JSON allows them) compare exactly too.
    n = 10**400
    assert equivalent(
        one("v.json", f"[{n}]".encode()), one("v.json", f"[{n + 1}]".encode()), numeric(1e-9)
    ).same
    assert not equivalent(
        one("v.json", f"[{n}]".encode()), one("v.json", f"[{2 * n}]".encode()), numeric(1e-9)
    ).same


# --- structure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "reason"),
    [
        ({"k": 1}, {"j": 1}, "$: key 'j' only in archive b"),
        ({"k": [1, 2]}, {"k": [1, 2, 3]}, "$['k']: 2 vs 3 elements"),
        ({"k": True}, {"k": 1}, "$['k']: boolean vs number"),
        ({"k": None}, {"k": 0}, "$['k']: null vs number"),
        ({"k": "a"}, {"k": "b"}, "$['k']: 'a' vs 'b'"),
        ({"k": [1, "x"]}, {"k": [1, "y"]}, "$['k'][1]: 'x' vs 'y'"),
        ([[1.0]], [{"a": 1.0}], "$[0]: array vs object"),
    ],
)
def test_json_structure(a: object, b: object, reason: str) -> None:
    result = equivalent(
        one("o.json", json.dumps(a).encode()),
        one("o.json", json.dumps(b).encode()),
        numeric(0.5, 1.0),
    )
    assert not result.same
    assert result.reason == f"o.json: {reason}"


def test_json_ignores_key_order_and_spelling() -> None:
    a = one("o.json", b'{"a": 1, "b": [1.0, 2e0]}')
    b = one("o.json", b'{"b":[1, 2.0],"a":1.0}')
    assert equivalent(a, b, numeric()).same


@pytest.mark.parametrize(
    ("a", "b", "reason"),
    [
        (b"x,y\n1,2\n", b"x,y\n1,2\n3,4\n", "row 3: only in archive b"),
        (b"x,y\n1,2\n", b"x,y\n1,2,3\n", "row 2: 2 vs 3 columns"),
        (b"x,y\n1,2\n", b"x,z\n1,2\n", "row 1, column 2: 'y' vs 'z'"),
        (b"x,y\n1,2\n", b"x,y\n1,abc\n", "row 2, column 2: '2' vs 'abc'"),
        (b"x,y\n1,2\n", b"x,y\n1,2.5\n", "row 2, column 2: 2.0 vs 2.5 differ beyond tolerance"),
    ],
)
def test_csv_structure(a: bytes, b: bytes, reason: str) -> None:
    result = equivalent(one("t.csv", a), one("t.csv", b), numeric(0.1))
    assert not result.same
    assert result.reason == f"t.csv: {reason}"


def test_csv_numbers_by_value() -> None:
    a = one("t.csv", b"x,y\r\n1,2.0\r\n")
    b = one("t.csv", b'x,"y"\n1.0,2\n')
    assert equivalent(a, b, numeric()).same


@pytest.mark.parametrize(
    ("a", "b", "reason"),
    [
        (npy([1.0, 2.0], (2,)), npy([1.0, 2.0], (1, 2)), "shape (2,) vs (1, 2)"),
        (npy([1.0, 2.0], (2,)), npy([1, 2], (2,), "<i8"), "dtype float vs signed int"),
        (npy([1, 2], (2,), "<u4"), npy([1, 2], (2,), "<i4"), "dtype unsigned int vs signed int"),
        (
            npy([True, False], (2,), "|b1"),
            npy([True, True], (2,), "|b1"),
            "element [1]: False vs True",
        ),
        (
            npy(list(range(6)), (2, 3), "<i2"),
            npy([0, 1, 2, 3, 4, 9], (2, 3), ">i8", fortran=True),
            "element [1, 2]: 5 vs 9 differ beyond tolerance",
        ),
    ],
)
def test_npy_structure(a: bytes, b: bytes, reason: str) -> None:
    result = equivalent(one("m.npy", a), one("m.npy", b), numeric(0.1))
    assert not result.same
    assert result.reason == f"m.npy: {reason}"


def test_npy_layouts_and_widths_compare_by_value() -> None:
    values = [float(i) for i in range(24)]
    base = one("m.npy", npy(values, (2, 3, 4)))
    for descr in ("<f8", ">f8", "<f4", ">f2"):
        for fortran in (False, True):
            for version in ((1, 0), (2, 0), (3, 0)):
                other = one(
                    "m.npy", npy(values, (2, 3, 4), descr, fortran=fortran, version=version)
                )
                result = equivalent(base, other, numeric())
                assert result.same, (descr, fortran, version, result.reason)
    # Length-1 axes do not change the layout, so any order reads the same.
    assert equivalent(
        one("m.npy", npy(values, (1, 24, 1))),
        one("m.npy", npy(values, (1, 24, 1), fortran=True)),
        numeric(),
    ).same


def test_file_sets_must_match() -> None:
    a = tar_of({"a.json": b"1", "b.json": b"2"})
    b = tar_of({"a.json": b"1", "c.json": b"2"})
    assert equivalent(a, b, numeric()).reason == "b.json: only in archive a"
    assert equivalent(b, a, numeric()).reason == "c.json: only in archive a"
    c = tar_of({"a.json": b"1", "b.json": b"2", "c.json": b"3", "d.json": b"4"})
    assert equivalent(a, c, numeric()).reason == "c.json: only in archive b (and 1 more)"


def test_globs_choose_what_is_compared_by_value() -> None:
    a = tar_of({"fit.json": b"[1.0]", "sub/fit.json": b"[1.0]", "log.txt": b"run 1"})
    b = tar_of({"fit.json": b"[1.0001]", "sub/fit.json": b"[1.0001]", "log.txt": b"run 1"})
    assert equivalent(a, b, numeric(1e-3)).same
    assert equivalent(a, b, numeric(1e-3, files=("**",))).same
    assert equivalent(a, b, numeric(1e-3, files=("**/*.json",))).same
    top_only = equivalent(a, b, numeric(1e-3, files=("*.json",)))  # '*' does not cross '/'
    assert top_only.reason == "sub/fit.json: contents differ (compared exactly)"
    assert not equivalent(a, b, numeric(1e-3, files=("sub/*",))).same
    assert equivalent(a, b, numeric(1e-3, files=("sub/*", "fit.*"))).same
    # Other files are always compared exactly.
    c = tar_of({"fit.json": b"[1.0]", "sub/fit.json": b"[1.0]", "log.txt": b"run 2"})
    assert equivalent(a, c, numeric(0.5)).reason == "log.txt: contents differ (compared exactly)"


def test_diffs_are_reported() -> None:
    a, b = one("v.json", b"[1.0, 100.0, 0.0]"), one("v.json", b"[1.5, 100.0, 0.0]")
    result = equivalent(a, b, numeric(0.5))
    assert result.same and result.files_compared == 1
    assert result.max_abs_diff == 0.5
    assert result.max_rel_diff == pytest.approx(1 / 3)


def test_exact_mode_reason_names_the_file() -> None:
    a = tar_of({"a": b"1", "b": b"2"})
    b = tar_of({"a": b"1", "b": b"3"})
    assert equivalent(a, b, EXACT).reason == "archives differ: b: contents differ"
    assert equivalent(a, b"junk", EXACT).reason.startswith("archives differ: archive b unreadable")


def test_bad_rules_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="mode"):
        equivalent(b"", b"", ValidationRule(mode="fuzzy"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tolerances"):
        equivalent(b"", b"", numeric(-1.0))
    with pytest.raises(ValueError, match="tolerances"):
        equivalent(b"", b"", numeric(0.0, math.nan))


# --- hostile files -------------------------------------------------------------------------------

GOOD_NPY = npy([1.0, 2.0], (2,))
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("h.json", DEEP, "malformed JSON"),
        ("h.json", b"[1, 2", "malformed JSON"),
        ("h.json", b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        ("h.json", b"[" + b"9" * 5000 + b"]", "malformed JSON"),
        ("h.json", b"[\xff]", "not UTF-8"),
        ("h.json", b"[" + b"0," * (MAX_VALUES + 1) + b"0]", "may hold more than"),
        ("h.csv", b"\xfe\xff", "not UTF-8"),
        ("h.csv", b"a," * (MAX_VALUES + 1), "may hold more than"),
        ("h.csv", b'"' + b"x" * 200_000 + b'"\n', "malformed CSV"),
        ("h.npy", GOOD_NPY[:5], "bad magic"),
        ("h.npy", b"\x93NUMPX" + GOOD_NPY[6:], "bad magic"),
        ("h.npy", GOOD_NPY[:60], "truncated .npy header"),
        ("h.npy", GOOD_NPY[:-1], "data is 15 bytes"),
        ("h.npy", GOOD_NPY + b"\x00", "data is 17 bytes"),
        ("h.npy", b"\x93NUMPY\x04\x00" + GOOD_NPY[8:], "unsupported .npy version 4.0"),
        ("h.npy", b"\x93NUMPY\x02\x00\xff\xff\xff\x7f", "header of 2147483647 bytes"),
        ("h.npy", npy_raw(" " * (64 * 1024 + 1), version=2), "header of 65537 bytes"),
        (
            "h.npy",
            npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }\n"),
            "holds more than 10000000",
        ),
        (
            "h.npy",
            npy_raw(
                "{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000, 100000), }\n"
            ),
            "holds more than",
        ),
        (
            "h.npy",
            npy_raw("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }\n", b"\0" * 16),
            "unsupported .npy dtype '|O'",
        ),
        (
            "h.npy",
            npy_raw("{'descr': '<c16', 'fortran_order': False, 'shape': (1,), }\n", b"\0" * 16),
            "unsupported .npy dtype",
        ),
        (
            "h.npy",
            npy_raw(
                "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), }\n", b"\0" * 8
            ),
            "structured",
        ),
        (
            "h.npy",
            npy_raw("{'descr': '<f8', 'fortran_order': 0, 'shape': (2,), }\n", b"\0" * 16),
            "fortran_order is not a bool",
        ),
        (
            "h.npy",
            npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (-2,), }\n"),
            "bad .npy shape",
        ),
        (
            "h.npy",
            npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (True,), }\n", b"\0" * 8),
            "bad .npy shape",
        ),
        (
            "h.npy",
            npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': [2], }\n", b"\0" * 16),
            "bad .npy shape",
        ),
        ("h.npy", npy_raw("{'descr': '<f8', 'shape': (2,), }\n", b"\0" * 16), "exactly descr"),
        (
            "h.npy",
            npy_raw(
                "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), 'x': 1}\n", b"\0" * 16
            ),
            "exactly descr",
        ),
        ("h.npy", npy_raw("-" * 60_000 + "1\n"), "malformed .npy header"),
        ("h.npy", npy_raw("__import__('os')\n"), "malformed .npy header"),
        (
            "h.npy",
            npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (2,) \n", b"\0" * 16),
            "malformed .npy header",
        ),
        ("h.npy", npy_raw("((((((1))))))\n"), "not a plain dict"),
        (
            "h.npy",
            npy_raw(
                "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n".replace(
                    "'<f8'", "'\xe9'"
                ),
                b"",
                3,
            ),
            "not UTF-8",
        ),
    ],
)
def test_hostile_files_dissent(name: str, content: bytes, reason: str) -> None:
    good = {"h.json": b"[1]", "h.csv": b"1\n", "h.npy": GOOD_NPY}[name]
    for a, b, side in ((good, content, "archive b"), (content, good, "archive a")):
        result = equivalent(one(name, a), one(name, b), numeric(0.1, 0.1))
        assert not result.same
        assert result.reason.startswith(f"{name}: ")
        assert reason in result.reason, result.reason
        if "header" in reason or "magic" in reason or "UTF-8" in reason or "may hold" in reason:
            assert side in result.reason


def test_json_nesting_is_capped() -> None:
    def nested(depth: int, leaf: bytes) -> bytes:
        return one("n.json", b"[" * depth + leaf + b"]" * depth)

    assert not equivalent(nested(64, b"1"), nested(64, b"2"), numeric()).same
    assert equivalent(nested(64, b"1"), nested(64, b"1.0"), numeric()).same
    result = equivalent(nested(70, b"1"), nested(70, b"1.0"), numeric())
    assert not result.same and "nested deeper than 64" in result.reason


def test_value_budget_spans_files() -> None:
    half = MAX_VALUES // 2 + 1
    x = npy_raw(f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({half},), }}\n", bytes(half))
    y = x[:-1] + b"\x01"
    a = tar_of({"1.npy": x, "2.npy": x})
    b = tar_of({"1.npy": y, "2.npy": y})
    result = equivalent(a, b, numeric(0.0, 1.0))
    assert not result.same
    assert result.reason == f"2.npy: more than {MAX_VALUES} values to compare"
    # Identical files cost nothing.
    assert equivalent(a, tar_of({"1.npy": x, "2.npy": y}), numeric(0.0, 1.0)).same


def test_absurd_reorder_is_refused() -> None:
    shape = (2,) * 22
    count = math.prod(shape)
    header = "{{'descr': '|u1', 'fortran_order': {}, 'shape': {!r}, }}\n"
    c = npy_raw(header.format(False, shape), bytes(count))
    f = npy_raw(header.format(True, shape), bytes(count - 1) + b"\x01")
    result = equivalent(one("m.npy", c), one("m.npy", f), numeric())
    assert not result.same and "reorder from column-major" in result.reason
    # Both sides column-major: no reordering needed.
    assert not equivalent(one("m.npy", f), one("m.npy", f[:-1] + b"\x02"), numeric()).same
    assert equivalent(one("m.npy", f), one("m.npy", f[:-1] + b"\x02"), numeric(0.0, 1.0)).same


@FUZZ
@given(
    kind=st.sampled_from(["json", "csv", "npy"]),
    data=st.binary(max_size=300),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 10**6),
)
def test_malformed_files_never_raise(
    kind: str, data: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    seed = {
        "json": json.dumps({"a": [1.5, -2, None, "x", {"b": [True, 1e-300]}]}).encode(),
        "csv": b'h,"q,uoted"\n1.5,2\n3,nan\n',
        "npy": npy(list(range(12)), (3, 4), ">i4", fortran=True, version=(2, 0)),
    }[kind]
    mutated = bytearray(seed)
    for pos, value in flips:
        mutated[pos % len(mutated)] = value
    mutated = mutated[: cut % (len(mutated) + 1)] if cut % 4 == 0 else mutated
    name = f"f.{kind}"
    for other in (bytes(mutated), data, seed + data):
        for a, b in ((seed, other), (other, seed), (other, other)):
            result = equivalent(one(name, a), one(name, b), numeric(1e-6, 1e-9))
            assert isinstance(result, Comparison) and result.reason
            if a == b:
                assert result.same  # identical bytes are never parsed


@PROPS
@given(values=st.lists(json_values, min_size=2, max_size=2))
def test_random_json_documents(values: list[object]) -> None:
    a = one("d.json", json.dumps(values[0]).encode())
    b = one("d.json", json.dumps(values[1]).encode())
    result = equivalent(a, b, numeric(1e-9))
    assert isinstance(result, Comparison)
    if json.dumps(values[0]) == json.dumps(values[1]):
        assert result.same


# --- grouping ------------------------------------------------------------------------------------


@PROPS
@given(
    base=st.lists(finite, min_size=1, max_size=8),
    honest=st.integers(2, 5),
    dissenters=st.integers(0, 3),
    seed=st.integers(),
)
def test_group_results_majority(base: list[float], honest: int, dissenters: int, seed: int) -> None:
    assume(dissenters < honest)
    rng = random.Random(seed)
    rule = numeric(1e-6, 1e-9)
    outputs: dict[str, bytes] = {}
    ids = [f"w{i:02d}" for i in range(honest + dissenters)]
    rng.shuffle(ids)
    for wid in ids[:honest]:
        noisy = [x * (1 + rng.uniform(-1e-7, 1e-7)) for x in base]
        outputs[wid] = tar_of({"out.json": json.dumps(noisy).encode()})
    for k, wid in enumerate(ids[honest:], start=1):
        outputs[wid] = tar_of({"out.json": json.dumps([x + 100.0 * k for x in base]).encode()})
    groups = group_results(outputs, rule)
    assert groups[0] == sorted(ids[:honest])
    assert sorted(w for g in groups for w in g) == sorted(ids)
    assert all(g == sorted(g) for g in groups)
    # The result depends on the contents only, not the order of the dict.
    shuffled = list(outputs.items())
    rng.shuffle(shuffled)
    assert group_results(dict(shuffled), rule) == groups


@PROPS
@given(
    outputs=st.dictionaries(
        st.text(alphabet="abcd", min_size=1, max_size=3),
        st.sampled_from([b"", b"x", b"y"]),
        max_size=8,
    )
)
def test_group_results_exact(outputs: dict[str, bytes]) -> None:
    groups = group_results(outputs, EXACT)
    assert sorted(w for g in groups for w in g) == sorted(outputs)
    for g in groups:
        assert len({outputs[w] for w in g}) == 1
    assert len(groups) == len(set(outputs.values()))
    # Largest first, ties by smallest worker id.
    assert [(-len(g), g[0]) for g in groups] == sorted((-len(g), g[0]) for g in groups)


def test_group_results_ties_and_empty() -> None:
    assert group_results({}, EXACT) == []
    outputs = {"d": b"1", "b": b"2", "c": b"1", "a": b"2", "e": b"3"}
    assert group_results(outputs, EXACT) == [["a", "b"], ["c", "d"], ["e"]]


# --- numpy cross-check ---------------------------------------------------------------------------


def test_npy_reader_agrees_with_numpy() -> None:
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(7)
    for descr in [
        "<f8",
        ">f8",
        "<f4",
        ">f4",
        "<f2",
        "<i8",
        ">i4",
        "<i2",
        "|i1",
        "<u8",
        ">u4",
        "<u2",
        "|u1",
        "|b1",
    ]:
        for shape in [(), (0,), (5,), (3, 4), (2, 3, 4), (4, 1, 3)]:
            for fortran in (False, True):
                for version in ((1, 0), (2, 0), (3, 0)):
                    dtype = np.dtype(descr)
                    if dtype.kind == "b":
                        arr = rng.integers(0, 2, size=shape).astype(dtype)
                    else:
                        arr = (np.abs(rng.standard_normal(size=shape)) * 50).astype(dtype)
                    arr = np.array(arr, order="F" if fortran else "C")  # keeps 0-d arrays 0-d
                    buf = io.BytesIO()
                    np.lib.format.write_array(buf, arr, version=version)
                    values = arr.ravel(order="C").tolist()
                    ours = npy(values, shape, descr)
                    label = (descr, shape, fortran, version)
                    result = equivalent(one("m.npy", buf.getvalue()), one("m.npy", ours), numeric())
                    assert result.same, (label, result.reason)
                    if arr.size:
                        changed = list(values)
                        last = changed[-1]
                        changed[-1] = (
                            (not last) if dtype.kind == "b" else last - 1 if last > 0 else last + 1
                        )
                        index = [int(i) for i in np.unravel_index(arr.size - 1, shape)]
                        result = equivalent(
                            one("m.npy", buf.getvalue()),
                            one("m.npy", npy(changed, shape, descr)),
                            numeric(),
                        )
                        assert not result.same, label
                        assert f"element {index}" in result.reason, (label, result.reason)
