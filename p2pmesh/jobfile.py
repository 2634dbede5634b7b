"""Reading a job file from disk: the I/O half of ``p2pmesh.core.jobspec``.

The core checks what the file says; this module checks what it points at. Each input must name
an existing regular file or folder (paths are relative to the job file's folder), no bigger than
``MAX_INPUT_BYTES``, and all of them together no bigger than ``MAX_TOTAL_INPUT_BYTES``. Problems
are reported in the core's ``field: message`` style, together with the core's own, so a user
sees everything wrong with a job in one run.

Packing folders into blobs and hashing them is not done here (that is the packer's job); the
sizes checked here are the bytes of the regular files, which bound the packed size closely.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from p2pmesh.core.jobspec import (
    MAX_INPUT_BYTES,
    MAX_JOB_TEXT_BYTES,
    MAX_TOTAL_INPUT_BYTES,
    JobSpec,
    field_path,
    job_from_json_text,
    pinned_by_digest,
    read_job_json,
)
from p2pmesh.errors import JobSpecError

__all__ = ["load_job_file", "resolve_image"]


def load_job_file(path: Path) -> tuple[JobSpec, dict[str, Path]]:
    """Read, parse and check a job file and the inputs it names.

    Args:
        path: the job file (JSON, UTF-8).

    Returns:
        The spec and, for each input name, the absolute path of its file or folder.

    Raises:
        JobSpecError: every problem with the file and its inputs, one ``field: message`` each.
    """
    path = Path(path)
    text = _read_text(path)
    base = path.parent
    try:
        spec = job_from_json_text(text)
    except JobSpecError as exc:
        # Still look at the inputs the file does name well, so one run shows every problem.
        extra = _input_problems(base, _named_inputs(text), exc.problems)[1]
        raise JobSpecError([*exc.problems, *extra]) from None
    resolved, problems = _input_problems(base, dict(spec.inputs), [])
    if problems:
        raise JobSpecError(problems)
    return spec, resolved


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_JOB_TEXT_BYTES + 1)
    except OSError as exc:
        raise JobSpecError([f"job: cannot read {path}: {_reason(exc)}"]) from None
    if len(data) > MAX_JOB_TEXT_BYTES:
        raise JobSpecError([f"job: {path} is larger than {MAX_JOB_TEXT_BYTES} bytes"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobSpecError([f"job: {path} is not UTF-8 text (byte {exc.start})"]) from None


def _named_inputs(text: str) -> dict[str, str]:
    """The inputs of a file that failed its checks, where the JSON itself could be read."""
    try:
        doc, _ = read_job_json(text)
    except JobSpecError:
        return {}
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, dict):
        return {}
    return {k: v for k, v in inputs.items() if isinstance(k, str) and isinstance(v, str) and v}


def _input_problems(
    base: Path, inputs: dict[str, str], known: list[str]
) -> tuple[dict[str, Path], list[str]]:
    resolved: dict[str, Path] = {}
    problems: list[str] = []
    total = 0
    for name in sorted(inputs):
        field = field_path("inputs", name)
        if any(p.startswith(f"{field}:") for p in known):
            continue  # the name or path is already reported; its file would only add noise
        source = inputs[name]
        target = base / source
        problem, size = _check_input(target, source)
        if problem:
            problems.append(f"{field}: {problem}")
            continue
        total += size
        resolved[name] = target.resolve()
    if total > MAX_TOTAL_INPUT_BYTES:
        problems.append(
            f"inputs: {_size(total)} in all, limit {_size(MAX_TOTAL_INPUT_BYTES)}",
        )
    return resolved, problems


def _check_input(target: Path, shown: str) -> tuple[str | None, int]:
    """(problem or None, bytes). Symlinks are followed: pointing at data elsewhere is normal."""
    try:
        st = target.stat()
    except FileNotFoundError:
        return f"no such file {shown}", 0
    except OSError as exc:
        return f"cannot read {shown}: {_reason(exc)}", 0
    if stat.S_ISREG(st.st_mode):
        if not os.access(target, os.R_OK):
            return f"cannot read {shown}: permission denied", 0
        if st.st_size > MAX_INPUT_BYTES:
            return f"{shown} is {_size(st.st_size)}, limit {_size(MAX_INPUT_BYTES)}", 0
        return None, st.st_size
    if stat.S_ISDIR(st.st_mode):
        return _check_folder(target, shown)
    return f"{shown} is not a regular file or folder", 0


def _check_folder(folder: Path, shown: str) -> tuple[str | None, int]:
    total = 0
    failure: list[OSError] = []
    # Links inside a folder are not followed: the packer decides what they become, and
    # following them here could walk the whole disk.
    for root, _dirs, files in os.walk(folder, onerror=failure.append, followlinks=False):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError as exc:
                failure.append(exc)
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
            if total > MAX_INPUT_BYTES:
                return f"{shown} holds over {_size(MAX_INPUT_BYTES)}, the limit", 0
    if failure:
        return f"cannot read {shown}: {_reason(failure[0])}", 0
    return None, total


def _reason(exc: OSError) -> str:
    if exc.errno is not None and exc.errno in errno.errorcode:
        return os.strerror(exc.errno).lower()
    return str(exc)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def resolve_image(spec: JobSpec, image_id_of: Callable[[str], str | None]) -> JobSpec:
    """Name the job's image by its ID as well, so that every replica runs the same bits.

    ``image_id_of(ref)`` asks the requester's engine for the ID of a name (or an ID); None:
    not there; ``LookupError``: no engine answers (the spec is returned as it is, for the
    daemon to resolve with its own engine).

    Raises:
        JobSpecError: the engine lacks the image and it is not pinned by digest, or the file's
        ``image_id`` is not what the engine holds.
    """
    try:
        if spec.image_id:
            if image_id_of(spec.image_id) != spec.image_id:
                raise JobSpecError([f"image_id: {spec.image_id} is not in this Docker engine"])
            return spec
        found = image_id_of(spec.image)
    except LookupError:
        return spec
    if found:
        return replace(spec, image_id=found)
    if pinned_by_digest(spec.image):
        return spec  # workers pull it by that digest; there is no ID to name here
    raise JobSpecError(
        [
            f"image: {spec.image} is not in this machine's Docker engine and not pinned by "
            "digest (name@sha256:…): workers that lack it could get it from nowhere; build, "
            "pull or load it here first"
        ]
    )
