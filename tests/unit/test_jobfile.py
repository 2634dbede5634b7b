"""Loading job files from disk: input resolution, sizes, and the shipped examples."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from p2pmesh import jobfile
from p2pmesh.core.jobspec import MAX_JOB_TEXT_BYTES
from p2pmesh.errors import JobSpecError
from p2pmesh.jobfile import load_job_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write_job(folder: Path, inputs: dict[str, Any], **extra: Any) -> Path:
    doc = {
        "schema_version": 1,
        "name": "t",
        "image": "p2pmesh/busybox:1",
        "command": ["true"],
        "inputs": inputs,
        "max_price": 1,
        "budget": 2,
        **extra,
    }
    path = folder / "job.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(JobSpecError) as info:
        load_job_file(path)
    return info.value.problems


def test_inputs_resolve_relative_to_the_job_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "text.txt").write_text("hello")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.bin").write_bytes(b"\0" * 10)
    (tmp_path / "sibling.txt").write_text("x")
    sub = tmp_path / "jobs"
    sub.mkdir()
    path = write_job(
        sub, {"text.txt": "../data/text.txt", "dir": "../folder", "s": "../sibling.txt"}
    )
    spec, resolved = load_job_file(path)
    assert spec.inputs["text.txt"] == "../data/text.txt"  # as written, for the user's eyes
    assert resolved == {
        "text.txt": (tmp_path / "data" / "text.txt").resolve(),
        "dir": (tmp_path / "folder").resolve(),
        "s": (tmp_path / "sibling.txt").resolve(),
    }
    assert all(p.is_absolute() for p in resolved.values())


def test_missing_input_is_named(tmp_path: Path) -> None:
    path = write_job(tmp_path, {"text.txt": "data/text.txt"})
    assert problems(path) == ["inputs.text.txt: no such file data/text.txt"]


def test_every_input_problem_is_reported(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "ok.txt").write_text("x")
    path = write_job(tmp_path, {"a": "nope", "b": "pipe", "c": "ok.txt", "d": "also-missing"})
    assert problems(path) == [
        "inputs.a: no such file nope",
        "inputs.b: pipe is not a regular file or folder",
        "inputs.d: no such file also-missing",
    ]


def test_schema_and_input_problems_come_together(tmp_path: Path) -> None:
    path = write_job(tmp_path, {"a": "missing", "../b": "x"}, timeout_s=0)
    got = problems(path)
    assert "inputs[\"../b\"]: input names must not contain empty, '.' or '..' parts" in got
    assert any(p.startswith("timeout_s:") for p in got)
    assert "inputs.a: no such file missing" in got
    # A badly named input is reported once, for its name, not again for its file.
    assert sum(p.startswith('inputs["../b"]') for p in got) == 1


def test_symlinked_input_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("x")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    _, resolved = load_job_file(write_job(tmp_path, {"x": "link.txt"}))
    assert resolved["x"] == (tmp_path / "real.txt").resolve()
    assert problems(write_job(tmp_path, {"x": "dangling"})) == ["inputs.x: no such file dangling"]


def test_input_size_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobfile, "MAX_INPUT_BYTES", 100)
    monkeypatch.setattr(jobfile, "MAX_TOTAL_INPUT_BYTES", 150)
    (tmp_path / "big.bin").write_bytes(b"x" * 101)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "a").write_bytes(b"x" * 60)
    (tmp_path / "d" / "b").write_bytes(b"x" * 60)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a").write_bytes(b"x" * 90)
    (tmp_path / "f.bin").write_bytes(b"x" * 90)
    assert problems(write_job(tmp_path, {"big": "big.bin", "d": "d"})) == [
        "inputs.big: big.bin is 101 bytes, limit 100 bytes",
        "inputs.d: d holds over 100 bytes, the limit",
    ]
    assert problems(write_job(tmp_path, {"e": "e", "f": "f.bin"})) == [
        "inputs: 180 bytes in all, limit 150 bytes"
    ]


def test_unreadable_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    secret.chmod(0)
    if os.geteuid() == 0:  # root reads everything; make this run behave like a user's
        monkeypatch.setattr(jobfile.os, "access", lambda p, mode: Path(p) != secret)
    assert problems(write_job(tmp_path, {"s": "secret.txt"})) == [
        "inputs.s: cannot read secret.txt: permission denied"
    ]


def test_missing_job_file(tmp_path: Path) -> None:
    [problem] = problems(tmp_path / "nope.json")
    assert problem.startswith("job: cannot read ") and "no such file" in problem


def test_job_file_that_is_a_folder(tmp_path: Path) -> None:
    [problem] = problems(tmp_path)
    assert problem.startswith("job: cannot read ")


def test_job_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(b" " * (MAX_JOB_TEXT_BYTES + 1))
    [problem] = problems(path)
    assert "larger than 262144 bytes" in problem


def test_job_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(b'{"name": "\xff"}')
    assert problems(path) == [f"job: {path} is not UTF-8 text (byte 10)"]


def test_json_error_in_job_file(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text('{\n  "name": "x",\n  "name": "y",\n}')
    got = problems(path)
    assert got == ['json: line 4, column 1: expected a "quoted" field name']


# --- the shipped examples ------------------------------------------------------------------------

EXAMPLE_JOBS = sorted(EXAMPLES.glob("*/job.json"))


def test_there_are_five_examples() -> None:
    assert {p.parent.name for p in EXAMPLE_JOBS} == {
        "word-count",
        "monte-carlo-pi",
        "material-fit",
        "lorenz96",
        "quantum-statevector",
    }


@pytest.mark.parametrize("path", EXAMPLE_JOBS, ids=[p.parent.name for p in EXAMPLE_JOBS])
def test_example_parses_and_its_inputs_exist(path: Path) -> None:
    spec, resolved = load_job_file(path)
    assert set(resolved) == set(spec.inputs)
    assert all(p.is_file() for p in resolved.values())
    assert spec.redundancy == 2
    assert spec.network == "none"
    # Each example documents its real output next to it (docs/JOBS.md "Examples").
    assert any((path.parent / "expected").iterdir())
