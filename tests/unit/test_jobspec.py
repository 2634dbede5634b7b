"""Job specs: every field's error path, JSON text, the wire form and the job digest."""

from __future__ import annotations

import copy
import hashlib
import json
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from p2pmesh.core import codec
from p2pmesh.core.jobspec import (
    MAX_JOB_TEXT_BYTES,
    MAX_WIRE_BYTES,
    WIRE_SCHEMA_VERSION,
    InputRef,
    JobSpec,
    Resources,
    ValidationRule,
    WireJob,
    job_digest,
    job_from_json_text,
    job_from_wire,
    job_to_document,
    job_to_wire,
    parse_job,
    read_job_json,
)
from p2pmesh.errors import DecodeError, JobSpecError, ValidationError


def valid_doc() -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": "word-count",
        "image": "p2pmesh/busybox:1",
        "command": ["sh", "-c", "wc -w < /in/text.txt > /out/count.txt"],
        "env": {"LANG": "C"},
        "inputs": {"text.txt": "data/text.txt"},
        "resources": {"cpus": 1, "ram_gb": 0.25, "gpus": 0, "gpu_memory_gb": 0, "disk_gb": 1},
        "timeout_s": 60,
        "deadline_s": 600,
        "max_price": 10,
        "budget": 40,
        "redundancy": 2,
        "validation": {"mode": "exact"},
        "network": "none",
        "labels": {},
    }


REF = InputRef(digest="sha256:" + "ab" * 32, size=351, kind="file")


def problems_of(doc: object) -> list[str]:
    with pytest.raises(JobSpecError) as info:
        parse_job(doc)
    return info.value.problems


def fields_of(problems: list[str]) -> set[str]:
    return {p.split(": ", 1)[0] for p in problems}


def with_value(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``doc`` with ``a.b`` set to ``value`` (``DELETE`` removes it)."""
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


DELETE = object()


# --- the happy path ------------------------------------------------------------------------------


def test_the_documented_example_parses() -> None:
    spec = parse_job(valid_doc())
    assert spec.name == "word-count"
    assert spec.command == ("sh", "-c", "wc -w < /in/text.txt > /out/count.txt")
    assert dict(spec.inputs) == {"text.txt": "data/text.txt"}
    assert spec.resources == Resources(
        millicpus=1000, ram_mib=256, gpus=0, gpu_memory_mib=0, disk_mib=1024
    )
    assert spec.resources.ram_gb == 0.25
    assert (spec.timeout_s, spec.deadline_s, spec.max_price, spec.budget) == (60, 600, 10, 40)
    assert spec.redundancy == 2
    assert spec.validation == ValidationRule(mode="exact", target_error=1e-4)
    assert spec.network == "none"


def test_defaults_fill_optional_fields() -> None:
    doc = {k: valid_doc()[k] for k in ("schema_version", "name", "image", "command")}
    spec = parse_job({**doc, "max_price": 3, "budget": 6})
    assert spec.env == {} and spec.inputs == {} and spec.labels == {}
    assert spec.resources == Resources()
    assert spec.timeout_s == 600
    assert spec.deadline_s == 3 * 600 + 600
    assert spec.redundancy == 2
    assert spec.validation.mode == "exact"
    assert spec.network == "none"


def test_numeric_validation_defaults() -> None:
    spec = parse_job(with_value(valid_doc(), "validation", {"mode": "numeric"}))
    assert spec.validation == ValidationRule(
        mode="numeric", rel_tol=0.0, abs_tol=0.0, files=("**",), target_error=1e-4
    )


def test_fractional_units_round_up_to_what_was_asked() -> None:
    doc = with_value(valid_doc(), "resources", {"cpus": 0.0005, "ram_gb": 0.1, "disk_gb": 0.3})
    r = parse_job(doc).resources
    # 0.1 GiB = 102.4 MiB: the job gets 103, never less than it asked for.
    assert (r.millicpus, r.ram_mib, r.disk_mib) == (1, 103, 308)


def test_spec_is_immutable_and_hashable() -> None:
    spec = parse_job(valid_doc())
    assert hash(spec) == hash(parse_job(valid_doc()))
    wire_job = job_from_wire(job_to_wire(spec, {"text.txt": REF}))
    assert {wire_job, wire_job} == {wire_job}
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.env["X"] = "1"  # type: ignore[index]


def test_budget_with_auto_redundancy_needs_one_replica() -> None:
    doc = {**valid_doc(), "redundancy": "auto", "budget": 10}
    assert parse_job(doc).redundancy == "auto"
    assert fields_of(problems_of({**doc, "budget": 9})) == {"budget"}


# --- every field's error path --------------------------------------------------------------------

BAD_VALUES: list[tuple[str, Any, str]] = [
    ("schema_version", DELETE, "schema_version"),
    ("schema_version", 2, "schema_version"),
    ("schema_version", "1", "schema_version"),
    ("schema_version", True, "schema_version"),
    ("name", DELETE, "name"),
    ("name", "", "name"),
    ("name", "word count", "name"),
    ("name", "x" * 65, "name"),
    ("name", 7, "name"),
    ("image", DELETE, "image"),
    ("image", "", "image"),
    ("image", "Busybox", "image"),
    ("image", "busybox:", "image"),
    ("image", "a//b", "image"),
    ("image", "a" * 256, "image"),
    ("image", "x@sha256:1234", "image"),
    ("image", ["busybox"], "image"),
    ("command", DELETE, "command"),
    ("command", [], "command"),
    ("command", "sh -c true", "command"),
    ("command", ["x"] * 65, "command"),
    ("command", ["sh", 1], "command[1]"),
    ("command", ["sh", "a\x00b"], "command[1]"),
    ("command", ["sh", "\ud800"], "command[1]"),
    ("command", ["sh", "x" * 4097], "command[1]"),
    ("command", ["sh"] + ["x" * 4000] * 5, "command"),
    ("command", [""], "command[0]"),
    ("env", [], "env"),
    ("env", {"1X": "a"}, "env.1X"),
    ("env", {"A-B": "a"}, "env.A-B"),
    ("env", {"A": 1}, "env.A"),
    ("env", {"A": "x" * 4097}, "env.A"),
    ("env", {"P2PMESH_JOB": "x"}, "env.P2PMESH_JOB"),
    ("env", {f"V{i}": "" for i in range(65)}, "env"),
    ("env", {f"V{i}": "x" * 4000 for i in range(5)}, "env"),
    ("inputs", [], "inputs"),
    ("inputs", {"/etc/passwd": "x"}, 'inputs["/etc/passwd"]'),
    ("inputs", {"../up": "x"}, 'inputs["../up"]'),
    ("inputs", {"a//b": "x"}, "inputs.a//b"),
    ("inputs", {"a/./b": "x"}, "inputs.a/./b"),
    ("inputs", {"a/": "x"}, "inputs.a/"),
    ("inputs", {"": "x"}, 'inputs[""]'),
    ("inputs", {"a\nb": "x"}, 'inputs["a\\nb"]'),
    ("inputs", {"x" * 256: "x"}, 'inputs["' + "x" * 40 + '"…]'),
    ("inputs", {"a": ""}, "inputs.a"),
    ("inputs", {"a": 3}, "inputs.a"),
    ("inputs", {"a": "x", "a/b": "y"}, "inputs.a/b"),
    ("inputs", {f"i{i}": "x" for i in range(65)}, "inputs"),
    ("resources", [], "resources"),
    ("resources.cpus", 0, "resources.cpus"),
    ("resources.cpus", -1, "resources.cpus"),
    ("resources.cpus", 257, "resources.cpus"),
    ("resources.cpus", "1", "resources.cpus"),
    ("resources.cpus", None, "resources.cpus"),
    ("resources.ram_gb", 0, "resources.ram_gb"),
    ("resources.ram_gb", 4097, "resources.ram_gb"),
    ("resources.gpus", -1, "resources.gpus"),
    ("resources.gpus", 17, "resources.gpus"),
    ("resources.gpus", 1.0, "resources.gpus"),
    ("resources.gpu_memory_gb", -1, "resources.gpu_memory_gb"),
    ("resources.gpu_memory_gb", 8, "resources.gpu_memory_gb"),  # asks memory of zero GPUs
    ("resources.disk_gb", 0, "resources.disk_gb"),
    ("resources.disk_gb", 10**6, "resources.disk_gb"),
    ("resources.cpu", 1, "resources.cpu"),
    ("timeout_s", 0, "timeout_s"),
    ("timeout_s", 86_401, "timeout_s"),
    ("timeout_s", 60.0, "timeout_s"),
    ("timeout_s", "60", "timeout_s"),
    ("deadline_s", 59, "deadline_s"),
    ("deadline_s", 7 * 86_400 + 1, "deadline_s"),
    ("deadline_s", 600.5, "deadline_s"),
    ("max_price", DELETE, "max_price"),
    ("max_price", -1, "max_price"),
    ("max_price", 1.5, "max_price"),
    ("max_price", 10**13, "max_price"),
    ("budget", DELETE, "budget"),
    ("budget", -1, "budget"),
    ("budget", 19, "budget"),  # below max_price × redundancy = 20
    ("budget", 40.0, "budget"),
    ("redundancy", 0, "redundancy"),
    ("redundancy", 10, "redundancy"),
    ("redundancy", "AUTO", "redundancy"),
    ("redundancy", 2.0, "redundancy"),
    ("validation", "exact", "validation"),
    ("validation", {}, "validation.mode"),
    ("validation", {"mode": "fuzzy"}, "validation.mode"),
    ("validation", {"mode": "exact", "rel_tol": 0.1}, "validation.rel_tol"),
    ("validation", {"mode": "numeric", "rel_tol": -1}, "validation.rel_tol"),
    ("validation", {"mode": "numeric", "rel_tol": 2}, "validation.rel_tol"),
    ("validation", {"mode": "numeric", "abs_tol": "0.1"}, "validation.abs_tol"),
    ("validation", {"mode": "numeric", "files": []}, "validation.files"),
    ("validation", {"mode": "numeric", "files": "*.json"}, "validation.files"),
    ("validation", {"mode": "numeric", "files": ["/out/x"]}, "validation.files[0]"),
    ("validation", {"mode": "numeric", "files": ["a", "../x"]}, "validation.files[1]"),
    ("validation", {"mode": "exact", "target_error": 0}, "validation.target_error"),
    ("validation", {"mode": "exact", "target_error": 1}, "validation.target_error"),
    ("validation", {"mode": "numeric", "tol": 1}, "validation.tol"),
    ("network", "host", "network"),
    ("network", None, "network"),
    ("labels", [], "labels"),
    ("labels", {"": "x"}, 'labels[""]'),
    ("labels", {"team": 1}, "labels.team"),
    ("labels", {"team": "x" * 257}, "labels.team"),
    ("labels", {"team": "a\nb"}, "labels.team"),
    ("labels", {f"k{i}": "v" for i in range(33)}, "labels"),
    ("nmae", "x", "nmae"),
]


@pytest.mark.parametrize(
    ("path", "value", "field"), BAD_VALUES, ids=[f"{p}={v!r:.30}" for p, v, _ in BAD_VALUES]
)
def test_each_bad_field_is_named(path: str, value: Any, field: str) -> None:
    problems = problems_of(with_value(valid_doc(), path, value))
    assert field in fields_of(problems), problems
    # One mistake, one line: no cascade of follow-on complaints about other fields.
    assert len(problems) == 1, problems


NUMERIC_FIELDS = [
    "schema_version",
    "resources.cpus",
    "resources.ram_gb",
    "resources.gpus",
    "resources.gpu_memory_gb",
    "resources.disk_gb",
    "timeout_s",
    "deadline_s",
    "max_price",
    "budget",
    "redundancy",
]


@pytest.mark.parametrize("path", NUMERIC_FIELDS)
@pytest.mark.parametrize("flag", [True, False])
def test_booleans_are_not_numbers(path: str, flag: bool) -> None:
    assert path in fields_of(problems_of(with_value(valid_doc(), path, flag)))


@pytest.mark.parametrize("key", ["rel_tol", "abs_tol", "target_error"])
def test_booleans_are_not_tolerances(key: str) -> None:
    doc = with_value(valid_doc(), "validation", {"mode": "numeric", key: True})
    assert fields_of(problems_of(doc)) == {f"validation.{key}"}


def test_all_problems_are_reported_at_once() -> None:
    doc = valid_doc()
    doc["name"] = "bad name"
    doc["resources"]["ram_gb"] = True
    doc["resources"]["gpus"] = -2
    doc["timeout_s"] = 0
    doc["network"] = "host"
    doc["labels"] = {"x": 1}
    doc["colour"] = "blue"
    del doc["image"]
    problems = problems_of(doc)
    assert fields_of(problems) == {
        "name",
        "image",
        "resources.ram_gb",
        "resources.gpus",
        "timeout_s",
        "network",
        "labels.x",
        "colour",
    }
    assert "resources.ram_gb: must be a number > 0" in "\n".join(problems)


def test_unknown_field_suggests_the_likely_one() -> None:
    problems = problems_of({**valid_doc(), "budgt": 40})
    assert problems == ["budgt: unknown field (did you mean 'budget'?)"]


def test_non_object_document() -> None:
    assert problems_of([1, 2]) == ["job: must be a JSON object, got a list of 2 items"]


def test_problem_list_is_capped() -> None:
    doc = {**valid_doc(), **{f"extra{i}": 1 for i in range(300)}}
    problems = problems_of(doc)
    assert len(problems) == 101
    assert problems[-1] == "job: 200 more problems not shown"


def test_whole_job_must_fit_an_offer() -> None:
    doc = valid_doc()
    doc["command"] = ["sh"] + ["x" * 4000] * 4
    doc["env"] = {f"V{i}": "y" * 3900 for i in range(4)}
    doc["labels"] = {f"k{i}": "z" * 256 for i in range(32)}
    doc["inputs"] = {f"{i:02d}" + "n" * 200: "f" for i in range(40)}
    problems = problems_of(doc)
    assert len(problems) == 1
    assert problems[0].startswith("job: encodes to") and str(MAX_WIRE_BYTES) in problems[0]


# --- JSON text -----------------------------------------------------------------------------------


def test_json_text_round_trip() -> None:
    assert job_from_json_text(json.dumps(valid_doc(), indent=2)) == parse_job(valid_doc())


def test_duplicate_keys_are_named_with_their_position() -> None:
    text = '{\n  "name": "a",\n  "resources": {"cpus": 1, "cpus": 2},\n  "name": "b"\n}'
    with pytest.raises(JobSpecError) as info:
        job_from_json_text(text)
    problems = info.value.problems
    assert "resources.cpus: duplicate field at line 3, column 28" in problems
    assert "name: duplicate field at line 4, column 3" in problems
    # The rest of the file is still checked in the same run.
    assert {"schema_version", "image", "command"} <= fields_of(problems)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"name": "a",}', "line 1, column 14"),
        ('{"name": NaN}', "line 1, column 10"),
        ('{"x": Infinity}', "line 1, column 7"),
        ('{"x": -Infinity}', "line 1, column 7"),
        ('{"x": 1e999}', "line 1, column 7"),
        ('{\n"x": 01}', "line 2, column 7"),
        ('{"x": "a\tb"}', "line 1, column 9"),
        ('{"x": "\\ud800"}', "line 1, column 8"),
        ('{"x": "\\udc00\\ud800"}', "line 1, column 8"),
        ('{"x": "\\q"}', "line 1, column 8"),
        ('{"x": "open', "line 1, column 7"),
        ("{} {}", "line 1, column 4"),
        ("// comment\n{}", "line 1, column 1"),
        ("", "line 1, column 1"),
        ("[" * 40 + "]" * 40, "line 1, column 34"),
        ('{"x": ' + "1" * 65 + "}", "line 1, column 7"),
        ("{'x': 1}", "line 1, column 2"),
    ],
)
def test_json_errors_name_the_position(text: str, where: str) -> None:
    with pytest.raises(JobSpecError) as info:
        job_from_json_text(text)
    [problem] = info.value.problems
    assert problem.startswith(f"json: {where}: "), problem


def test_json_escapes_decode() -> None:
    doc = valid_doc()
    doc["env"] = {"GREETING": 'h\u00e9llo \U0001f600 "q" \\ /\b\f\n\r\t'}
    text = json.dumps(doc, ensure_ascii=True)
    assert job_from_json_text(text).env["GREETING"] == doc["env"]["GREETING"]


def test_byte_order_mark_is_ignored() -> None:
    assert job_from_json_text("\ufeff" + json.dumps(valid_doc())).name == "word-count"


def test_json_text_size_limit() -> None:
    text = json.dumps(valid_doc()) + " " * MAX_JOB_TEXT_BYTES
    with pytest.raises(JobSpecError, match="limit 262144"):
        job_from_json_text(text)


@given(st.text(max_size=200))
def test_json_text_never_raises_anything_else(text: str) -> None:
    try:
        job_from_json_text(text)
    except JobSpecError:
        pass


# --- the wire form -------------------------------------------------------------------------------


def wire_of(doc: dict[str, Any] | None = None) -> dict[str, Any]:
    return job_to_wire(parse_job(doc or valid_doc()), {"text.txt": REF})


def test_wire_form_shape() -> None:
    wire = wire_of()
    assert wire["resources"] == {
        "millicpus": 1000,
        "ram_mib": 256,
        "gpus": 0,
        "gpu_memory_mib": 0,
        "disk_mib": 1024,
    }
    assert wire["inputs"] == {"text.txt": {"digest": REF.digest, "size": 351, "kind": "file"}}
    assert wire["validation"] == {"mode": "exact", "target_error": [1, -4]}
    assert wire["schema_version"] == WIRE_SCHEMA_VERSION == 3  # the file stays at 1
    assert wire["image_id"] == ""  # not resolved: built by code, not offered
    assert "data/text.txt" not in json.dumps(wire)  # local paths stay local


def test_wire_round_trip_replaces_paths_by_digests() -> None:
    spec = parse_job(valid_doc())
    wire = job_to_wire(spec, {"text.txt": REF})
    got = job_from_wire(wire)
    assert got.input_refs == {"text.txt": REF}
    assert got.spec.inputs == {"text.txt": REF.digest}
    assert got.spec == JobSpec(**{**_fields(spec), "inputs": {"text.txt": REF.digest}})
    assert job_to_wire(got.spec, got.input_refs) == wire
    assert got.digest == job_digest(spec, {"text.txt": REF})


def _fields(spec: JobSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in JobSpec.__dataclass_fields__}


def test_job_to_wire_needs_exactly_the_inputs_refs() -> None:
    spec = parse_job(valid_doc())
    with pytest.raises(JobSpecError, match=r"inputs.text.txt: has no content reference"):
        job_to_wire(spec)
    with pytest.raises(JobSpecError, match=r"inputs.other: has a content reference"):
        job_to_wire(spec, {"text.txt": REF, "other": REF})


def test_job_to_wire_refuses_an_invalid_hand_built_spec() -> None:
    spec = JobSpec(name="bad name", image="x", command=("true",), max_price=1, budget=2)
    with pytest.raises(JobSpecError, match="name"):
        job_to_wire(spec)
    spec = JobSpec(
        name="ok",
        image="x",
        command=("true",),
        max_price=1,
        budget=2,
        validation=ValidationRule(mode="exact", rel_tol=0.5),
    )
    with pytest.raises(JobSpecError, match="does not survive the wire"):
        job_to_wire(spec)


BAD_WIRE: list[tuple[str, Any, str]] = [
    ("timeout_s", DELETE, "timeout_s"),  # the wire form has no defaults
    ("deadline_s", DELETE, "deadline_s"),
    ("env", DELETE, "env"),
    ("inputs", DELETE, "inputs"),
    ("redundancy", DELETE, "redundancy"),
    ("resources.millicpus", 1.0, "resources.millicpus"),
    ("resources.millicpus", 0, "resources.millicpus"),
    ("resources.ram_mib", DELETE, "resources.ram_mib"),
    ("resources.ram_mib", True, "resources.ram_mib"),
    ("resources.disk_mib", 0, "resources.disk_mib"),
    ("resources.gpu_memory_mib", 1, "resources.gpu_memory_mib"),
    ("resources.cpus", 1, "resources.cpus"),
    ("validation.target_error", DELETE, "validation.target_error"),
    ("validation.target_error", 0.0001, "validation.target_error"),
    ("validation.target_error", "0.0001", "validation.target_error"),  # wire version 1's form
    ("validation.target_error", [10, -5], "validation.target_error"),  # mantissa ends in 0
    ("validation.target_error", [1], "validation.target_error"),
    ("validation.target_error", [1, -4, 0], "validation.target_error"),
    ("validation.target_error", [1.0, -4], "validation.target_error"),
    ("validation.target_error", [True, -4], "validation.target_error"),
    ("validation.target_error", [1, 0], "validation.target_error"),  # not below 1
    ("validation.target_error", [0, 0], "validation.target_error"),  # not above 0
    ("validation.target_error", [-1, -4], "validation.target_error"),
    ("validation.target_error", [1234567890123456, -20], "validation.target_error"),  # 16 digits
    ("validation.target_error", [1, -301], "validation.target_error"),  # below 1e-300
    ("validation.target_error", [1, 2**63], "validation.target_error"),
    ("validation.target_error", [1, 2**62], "validation.target_error"),  # refused, not computed
    ("validation.target_error", [1, -(2**62)], "validation.target_error"),
    ("validation.target_error", [1, -401], "validation.target_error"),
    ("inputs.text.txt", "sha256:" + "ab" * 32, "inputs.text.txt"),
    ("inputs.text.txt.digest", "sha256:" + "AB" * 32, "inputs.text.txt.digest"),
    ("inputs.text.txt.digest", "md5:00", "inputs.text.txt.digest"),
    ("inputs.text.txt.digest", DELETE, "inputs.text.txt.digest"),
    ("inputs.text.txt.size", -1, "inputs.text.txt.size"),
    ("inputs.text.txt.size", 2**31, "inputs.text.txt.size"),
    ("inputs.text.txt.size", DELETE, "inputs.text.txt.size"),
    ("inputs.text.txt.kind", "link", "inputs.text.txt.kind"),
    ("inputs.text.txt.kind", DELETE, "inputs.text.txt.kind"),
    ("inputs.text.txt.mode", 420, "inputs.text.txt.mode"),
    ("name", "bad name", "name"),
    ("budget", 1, "budget"),
    ("schema_version", 0, "schema_version"),
    ("schema_version", 4, "schema_version"),
    ("schema_version", True, "schema_version"),
]


@pytest.mark.parametrize(
    ("path", "value", "field"), BAD_WIRE, ids=[f"{p}={v!r:.30}" for p, v, _ in BAD_WIRE]
)
def test_each_bad_wire_field_is_named(path: str, value: Any, field: str) -> None:
    # "text.txt" contains a dot, so walk the path by hand for the inputs cases.
    wire = copy.deepcopy(wire_of())
    if path.startswith("inputs.text.txt"):
        rest = path.removeprefix("inputs.text.txt")
        if rest:
            target = wire["inputs"]["text.txt"]
            key = rest[1:]
        else:
            target, key = wire["inputs"], "text.txt"
        if value is DELETE:
            del target[key]
        else:
            target[key] = value
    else:
        wire = with_value(wire, path, value)
    with pytest.raises(JobSpecError) as info:
        job_from_wire(wire)
    assert field in fields_of(info.value.problems), info.value.problems


def test_wire_numeric_tolerances_are_canonical_decimals() -> None:
    doc = with_value(
        valid_doc(),
        "validation",
        {"mode": "numeric", "rel_tol": 1e-9, "abs_tol": 0, "files": ["*.json"]},
    )
    wire = wire_of(doc)
    assert wire["validation"] == {
        "mode": "numeric",
        "rel_tol": [1, -9],
        "abs_tol": [0, 0],
        "files": ["*.json"],
        "target_error": [1, -4],
    }
    for bad_zero in ([0, -1], [0, 1]):
        bad = copy.deepcopy(wire)
        bad["validation"]["abs_tol"] = bad_zero
        with pytest.raises(JobSpecError, match=r"validation\.abs_tol: zero must be written"):
            job_from_wire(bad)


def test_a_huge_integer_tolerance_is_refused_not_overflowed() -> None:
    doc = with_value(valid_doc(), "validation", {"mode": "numeric", "abs_tol": 10**400})
    assert fields_of(problems_of(doc)) == {"validation.abs_tol"}


@pytest.mark.parametrize(
    ("written", "wire"),
    [
        ("1e-9", [1, -9]),  # how JavaScript writes it
        ("1e-09", [1, -9]),  # how Python writes it
        ("0.000000001", [1, -9]),
        ("1.0E-9", [1, -9]),
        ("1.5e-3", [15, -4]),
        ("0.25", [25, -2]),
        ("100", [1, 2]),
        ("100.0", [1, 2]),
        ("123456789012345", [123456789012345, 0]),
        ("0.1", [1, -1]),
        ("1e300", [1, 300]),
        ("1e-300", [1, -300]),
        ("0", [0, 0]),
        ("-0.0", [0, 0]),
    ],
)
def test_tolerance_spellings_map_to_one_wire_decimal(written: str, wire: list[int]) -> None:
    doc = valid_doc()
    doc["validation"] = {"mode": "numeric", "abs_tol": 0}
    text = json.dumps(doc).replace('"abs_tol": 0', f'"abs_tol": {written}')
    got = job_from_json_text(text)
    assert job_to_wire(got, {"text.txt": REF})["validation"]["abs_tol"] == wire
    # and back: the wire decimal gives the same double as reading the literal
    assert got.validation.abs_tol == float(written) + 0.0


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("1234567890123456", "more than 15 significant digits"),
        ("0.1234567890123456", "more than 15 significant digits"),
        ("1e-301", "from 1e-300 to 1e300"),
        ("2e300", "from 1e-300 to 1e300"),
        ("-1e-9", "≥ 0"),
    ],
)
def test_tolerances_outside_the_exact_range_are_refused(written: str, message: str) -> None:
    doc = valid_doc()
    doc["validation"] = {"mode": "numeric", "abs_tol": 0}
    text = json.dumps(doc).replace('"abs_tol": 0', f'"abs_tol": {written}')
    with pytest.raises(JobSpecError) as info:
        job_from_json_text(text)
    assert any(
        p.startswith("validation.abs_tol: ") and message in p for p in info.value.problems
    ), info.value.problems


def test_negative_zero_tolerance_does_not_change_the_digest() -> None:
    base = {"mode": "numeric", "rel_tol": 0.0, "abs_tol": 0.0}
    a = parse_job(with_value(valid_doc(), "validation", base))
    b = parse_job(with_value(valid_doc(), "validation", {**base, "abs_tol": -0.0}))
    assert job_digest(a, {"text.txt": REF}) == job_digest(b, {"text.txt": REF})


def test_wire_overlapping_inputs_refused() -> None:
    wire = wire_of()
    ref = wire["inputs"]["text.txt"]
    wire["inputs"] = {"a": ref, "a/b": ref}
    with pytest.raises(JobSpecError, match=r"inputs.a/b: lies inside input 'a'"):
        job_from_wire(wire)


def test_wire_refuses_oversized_dicts_handed_in_directly() -> None:
    wire = wire_of()
    wire["env"] = {f"V{i}": "x" * 4000 for i in range(4)}
    wire["command"] = ["sh"] + ["y" * 4000] * 4
    wire["labels"] = {f"k{i}": "z" * 256 for i in range(32)}
    wire["inputs"] = {f"{i:02d}" + "n" * 250: wire["inputs"]["text.txt"] for i in range(64)}
    with pytest.raises(JobSpecError, match="job: encodes to"):
        job_from_wire(wire)


# --- digests -------------------------------------------------------------------------------------

# Pinned: a change here changes every job's identity on the mesh and needs a wire schema
# version (2 since tolerances became integer decimals).
WORD_COUNT_DIGEST = "sha256:cbdbf76810526547f64a382a345fe1e5186393c32110070d2009275dce679156"


def test_digest_is_pinned() -> None:
    spec = parse_job(valid_doc())
    digest = job_digest(spec, {"text.txt": REF})
    assert digest == "sha256:" + hashlib.sha256(codec.encode(wire_of())).hexdigest()
    assert digest == WORD_COUNT_DIGEST


def test_digest_ignores_key_order_and_local_paths() -> None:
    doc = valid_doc()
    shuffled = dict(reversed(list(doc.items())))
    shuffled["inputs"] = {"text.txt": "../elsewhere/copy.txt"}
    shuffled["env"] = dict(reversed(list(doc["env"].items())))
    a = job_digest(parse_job(doc), {"text.txt": REF})
    assert job_digest(parse_job(shuffled), {"text.txt": REF}) == a


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("name", "word-count-2"),
        ("command", ["sh", "-c", "true"]),
        ("resources.ram_gb", 0.5),
        ("budget", 41),
        ("redundancy", "auto"),
        ("validation", {"mode": "exact", "target_error": 0.001}),
        ("labels", {"k": "v"}),
    ],
)
def test_digest_changes_with_any_field(path: str, value: Any) -> None:
    a = job_digest(parse_job(valid_doc()), {"text.txt": REF})
    b = job_digest(parse_job(with_value(valid_doc(), path, value)), {"text.txt": REF})
    assert a != b


def test_digest_changes_with_input_content() -> None:
    spec = parse_job(valid_doc())
    other = InputRef(digest="sha256:" + "cd" * 32, size=351, kind="file")
    assert job_digest(spec, {"text.txt": REF}) != job_digest(spec, {"text.txt": other})


# --- property tests ------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
_name_part = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,11}", fullmatch=True)


def _tolerances(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Numbers a job file may hold as a tolerance: 15 significant digits, 0 or ≥ 1e-300."""
    rounded = st.floats(min_value=lo, max_value=hi).map(lambda x: float(f"{x:.14e}"))
    return rounded.filter(lambda x: (x == 0 or x >= 1e-300) and lo <= x <= hi)


@st.composite
def job_docs(draw: st.DrawFn) -> dict[str, Any]:
    timeout = draw(st.integers(1, 86_400))
    max_price = draw(st.integers(0, 1000))
    redundancy = draw(st.one_of(st.integers(1, 9), st.just("auto")))
    replicas = 1 if redundancy == "auto" else redundancy
    gpus = draw(st.integers(0, 16))
    positive = st.one_of(
        st.integers(1, 64), st.floats(min_value=1e-6, max_value=64, allow_nan=False)
    )
    doc: dict[str, Any] = {
        "schema_version": 1,
        "name": draw(st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)),
        "image": draw(
            st.one_of(
                st.sampled_from(["p2pmesh/python:1", "localhost:5000/a/b", "ubuntu"]),
                st.from_regex(
                    r"[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,7})?",
                    fullmatch=True,
                ),
            )
        ),
        "command": draw(st.lists(_text.map(lambda s: s[:50]), min_size=1, max_size=6)).copy(),
        "env": draw(
            st.dictionaries(
                st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).filter(
                    lambda s: not s.startswith("P2PMESH_")
                ),
                _text.map(lambda s: s[:40]),
                max_size=4,
            )
        ),
        "inputs": draw(
            st.dictionaries(
                st.lists(_name_part, min_size=1, max_size=3)
                .map("/".join)
                .filter(lambda s: ".." not in s.split("/") and "." not in s.split("/")),
                st.from_regex(r"[a-z./]{1,20}", fullmatch=True),
                max_size=4,
            )
        ),
        "resources": {
            "cpus": draw(positive),
            "ram_gb": draw(positive),
            "gpus": gpus,
            "gpu_memory_gb": draw(positive) if gpus else 0,
            "disk_gb": draw(positive),
        },
        "timeout_s": timeout,
        "deadline_s": draw(st.integers(timeout, 7 * 86_400)),
        "max_price": max_price,
        "budget": max_price * replicas + draw(st.integers(0, 100)),
        "redundancy": redundancy,
        "validation": draw(
            st.one_of(
                st.builds(
                    lambda t: {"mode": "exact", "target_error": t},
                    _tolerances(1e-12, 0.5),
                ),
                st.builds(
                    lambda r, a, f: {"mode": "numeric", "rel_tol": r, "abs_tol": a, "files": f},
                    _tolerances(0, 1),
                    _tolerances(0, 1e6),
                    st.lists(
                        st.sampled_from(["*.json", "**", "out/*.npy"]), min_size=1, max_size=4
                    ),
                ),
            )
        ),
        "network": draw(st.sampled_from(["none", "bridge"])),
        "labels": draw(
            st.dictionaries(
                st.from_regex(r"[a-z0-9][a-z0-9./:-]{0,10}", fullmatch=True),
                st.from_regex(r"[ -~]{0,20}", fullmatch=True),
                max_size=3,
            )
        ),
    }
    # Drop overlapping input names ("a" and "a/b"): the checker refuses those on purpose.
    names = sorted(doc["inputs"])
    doc["inputs"] = {
        n: doc["inputs"][n]
        for n in names
        if not any(n.startswith(other + "/") for other in names if other != n)
    }
    if doc["command"][0] == "":
        doc["command"][0] = "true"
    return doc


@st.composite
def input_refs(draw: st.DrawFn, names: list[str]) -> dict[str, InputRef]:
    return {
        name: InputRef(
            digest="sha256:" + hashlib.sha256(draw(st.binary(max_size=8))).hexdigest(),
            size=draw(st.integers(0, 2**30)),
            kind=draw(st.sampled_from(["file", "dir"])),
        )
        for name in names
    }


def _no_floats(value: Any) -> bool:
    if isinstance(value, float):
        return False
    if isinstance(value, dict):
        return all(_no_floats(v) for v in value.values())
    if isinstance(value, list):
        return all(_no_floats(v) for v in value)
    return True


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_wire_round_trip(data: st.DataObject) -> None:
    spec = parse_job(data.draw(job_docs()))
    refs = data.draw(input_refs(sorted(spec.inputs)))
    wire = job_to_wire(spec, refs)
    assert _no_floats(wire)
    assert codec.decode(codec.encode(wire)) == wire
    got = job_from_wire(codec.decode(codec.encode(wire)))
    assert got == WireJob(
        spec=JobSpec(**{**_fields(spec), "inputs": {n: r.digest for n, r in refs.items()}}),
        input_refs=refs,
    )
    assert job_to_wire(got.spec, got.input_refs) == wire
    assert got.digest == job_digest(spec, refs)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(job_docs())
def test_document_round_trip(doc: dict[str, Any]) -> None:
    spec = parse_job(doc)
    assert parse_job(job_to_document(spec)) == spec
    assert parse_job(json.loads(json.dumps(job_to_document(spec)))) == spec


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.sampled_from(["auto", "exact", "numeric", "none", "file", "dir", "1e-09", "0.0001"]),
)
_keys = st.one_of(
    st.text(max_size=12), st.sampled_from([*wire_of(), "millicpus", "digest", "mode"])
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)),
    max_leaves=20,
)


def _assert_only_validation_errors(value: object) -> None:
    try:
        got = job_from_wire(value)
    except JobSpecError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)
        return
    # Whatever is accepted is already canonical: it re-encodes to exactly what was sent.
    assert job_to_wire(got.spec, got.input_refs) == value


@settings(max_examples=500)
@given(_values)
def test_job_from_wire_on_random_values(value: object) -> None:
    _assert_only_validation_errors(value)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_job_from_wire_on_mutated_wire_jobs(data: st.DataObject) -> None:
    spec = parse_job(data.draw(job_docs()))
    wire = job_to_wire(spec, data.draw(input_refs(sorted(spec.inputs))))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(wire)[1:] or [()]))
        if not path:
            break
        parent = wire
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = data.draw(_values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(_keys)] = data.draw(_values)
    _assert_only_validation_errors(wire)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_decoded_bytes_never_break_job_from_wire(raw: bytes) -> None:
    try:
        value = codec.decode(raw)
    except DecodeError:
        return
    _assert_only_validation_errors(value)


def test_job_spec_error_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        job_from_wire({})


_json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300)
@given(_json_values, st.booleans(), st.sampled_from([None, 1, "\t"]))
def test_strict_reader_agrees_with_the_stdlib(value: Any, ascii_only: bool, indent: Any) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    doc, duplicates = read_job_json(text)
    assert doc == json.loads(text)
    assert duplicates == []


def test_wire_job_encoding_is_the_checked_wire_form_and_identifies_it() -> None:
    spec = parse_job(valid_doc())
    refs = {"text.txt": REF}
    hand_built = WireJob(spec=job_from_wire(job_to_wire(spec, refs)).spec, input_refs=refs)
    received = job_from_wire(codec.decode(codec.encode(job_to_wire(spec, refs))))
    expected = codec.encode(job_to_wire(spec, refs))
    # One from the wire carries the bytes it was checked as; one built by hand encodes lazily.
    assert received.encoded == expected == hand_built.encoded
    assert received.digest == hand_built.digest == job_digest(spec, refs)
    assert received.wire() == job_to_wire(spec, refs)
    received.wire()["name"] = "changed"  # a copy: the job itself cannot be changed through it
    assert received.wire()["name"] == "word-count"
    assert received == hand_built and hash(received) == hash(hand_built)


# --- wire version 1 (read, never written) --------------------------------------------------------


def _as_v1(wire: dict[str, Any]) -> dict[str, Any]:
    v1 = copy.deepcopy(wire)
    v1["schema_version"] = 1
    del v1["image_id"]
    for key, value in v1["validation"].items():
        if key != "mode" and key != "files":
            v1["validation"][key] = repr(float(f"{value[0]}e{value[1]}") + 0.0)
    return v1


def test_a_version_1_job_reads_and_keeps_its_bytes_and_digest() -> None:
    doc = with_value(
        valid_doc(), "validation", {"mode": "numeric", "rel_tol": 1e-9, "abs_tol": 0.25}
    )
    v2 = wire_of(doc)
    v1 = _as_v1(v2)
    assert v1["validation"]["rel_tol"] == "1e-09" and v1["validation"]["abs_tol"] == "0.25"
    got = job_from_wire(codec.decode(codec.encode(v1)))
    assert got.spec == job_from_wire(v2).spec  # the same job ...
    assert got.encoded == codec.encode(v1)  # ... in the bytes it came in
    assert got.digest == "sha256:" + hashlib.sha256(codec.encode(v1)).hexdigest()
    assert got.wire() == v1
    assert job_to_wire(got.spec, got.input_refs) == v2  # what we write is the newest version


def test_the_previous_release_job_vector_still_reads_with_its_digest() -> None:
    # tests/vectors/job_vectors.json as the previous release (wire version 1) made it.
    old = {
        "schema_version": 1, "name": "monte-carlo-pi", "image": "p2pmesh/python:3.11",
        "command": ["python3", "/in/pi.py"], "env": {"SEED": "42"},
        "inputs": {"pi.py": {"digest": "sha256:01cd34b573d739c1bad97382753379b297fec166797d50cf"
                             "471cb254f9a65469", "size": 73, "kind": "file"}},
        "resources": {"millicpus": 1000, "ram_mib": 512, "gpus": 0, "gpu_memory_mib": 0,
                      "disk_mib": 1024},
        "timeout_s": 300, "deadline_s": 1500, "max_price": 5, "budget": 10, "redundancy": 2,
        "validation": {"mode": "exact", "target_error": "0.0001"}, "network": "none",
        "labels": {},
    }  # fmt: skip
    got = job_from_wire(old)
    assert got.digest == "sha256:b95044012dd559f870f0f310155ad7eb85bd739701ca8aa9b4dc19cdde5cfd7b"


@pytest.mark.parametrize("spelling", ["1e-4", "0.00010", "1.0e-04", "nan", "-0.0001", [1, -4]])
def test_version_1_tolerances_keep_their_one_spelling(spelling: Any) -> None:
    v1 = _as_v1(wire_of())
    v1["validation"]["target_error"] = spelling
    with pytest.raises(JobSpecError, match=r"validation\.target_error"):
        job_from_wire(v1)


def test_version_2_tolerances_are_not_strings() -> None:
    wire = wire_of()
    wire["validation"]["target_error"] = "0.0001"
    with pytest.raises(JobSpecError, match=r"validation\.target_error: must be a decimal \["):
        job_from_wire(wire)


@settings(max_examples=300)
@given(st.integers(1, 10**15 - 1), st.integers(-314, 300))
def test_every_valid_wire_decimal_survives_the_round_trip(mantissa: int, exponent: int) -> None:
    while mantissa % 10 == 0:
        mantissa //= 10
    digits = len(str(mantissa))
    assume(digits - 1 + exponent >= -300 and mantissa * Fraction(10) ** exponent <= 10**300)
    wire = wire_of(with_value(valid_doc(), "validation", {"mode": "numeric"}))
    wire["validation"]["abs_tol"] = [mantissa, exponent]
    job = job_from_wire(wire)
    assert job_to_wire(job.spec, job.input_refs)["validation"]["abs_tol"] == [mantissa, exponent]


# -- image_id (wire version 3) ------------------------------------------------------------------
IMAGE_ID = "sha256:" + "ab" * 32


def test_image_id_travels_in_version_3_and_is_part_of_the_digest() -> None:
    spec = parse_job({**valid_doc(), "image_id": IMAGE_ID})
    wire = job_to_wire(spec, {"text.txt": REF})
    assert wire["schema_version"] == 3 and wire["image_id"] == IMAGE_ID
    back = job_from_wire(codec.decode(codec.encode(wire)))
    assert back.spec.image_id == IMAGE_ID
    assert job_digest(spec, {"text.txt": REF}) != WORD_COUNT_DIGEST


def test_a_version_2_job_reads_without_image_id_and_keeps_its_bytes() -> None:
    v2 = wire_of()
    v2["schema_version"] = 2
    del v2["image_id"]
    got = job_from_wire(codec.decode(codec.encode(v2)))
    assert got.spec.image_id == ""
    assert got.encoded == codec.encode(v2) and got.wire() == v2


@pytest.mark.parametrize(
    ("version", "image_id", "problem"),
    [
        (2, IMAGE_ID, "image_id: unknown field in wire version 2"),
        (3, DELETE, "image_id: required"),
        (3, "sha256:AB", "image_id: must be"),
        (3, 7, "image_id: must be"),
        (3, "ab" * 32, "image_id: must be"),
    ],
)
def test_image_id_on_the_wire_is_checked(version: int, image_id: Any, problem: str) -> None:
    wire = wire_of()
    wire["schema_version"] = version
    if image_id is DELETE:
        del wire["image_id"]
    else:
        wire["image_id"] = image_id
    with pytest.raises(JobSpecError) as err:
        job_from_wire(wire)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_a_job_file_may_pin_the_image_id() -> None:
    assert parse_job({**valid_doc(), "image_id": IMAGE_ID}).image_id == IMAGE_ID
    assert parse_job(valid_doc()).image_id == ""
    with pytest.raises(JobSpecError):
        parse_job({**valid_doc(), "image_id": "latest"})
