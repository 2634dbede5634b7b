"""Job specs: the job file a user writes, and the wire form peers sign, gossip and hash.

Theory of operation (docs/JOBS.md is the user-facing reference):

* ``job_from_json_text`` reads job-file text with the strict JSON reader of
  ``core/strictjson.py`` (duplicate keys, NaN/Infinity and lone surrogates are errors with a
  line and column), then
  ``parse_job`` checks every field against the limits below and raises one ``JobSpecError``
  listing *every* problem as ``field: message``, so a user fixes a file in one pass.
* A ``JobSpec`` holds exact values only: resources in integer units (millicpus, MiB), so two
  nodes that parse the same file hold equal specs and compute the same digest.
* The wire form (``job_to_wire`` / ``job_from_wire``) has no floats, no defaults and no local
  paths: each input is named by content (``InputRef``). ``job_from_wire`` reads untrusted peer
  data; its invariant (fuzzed in tests) is that on any value it returns a ``WireJob`` or raises
  ``JobSpecError``, nothing else. One spec has exactly one wire form, so
  ``job_digest`` = sha256 of its canonical encoding identifies a job across the mesh.

Construct specs through ``parse_job`` / ``job_from_json_text`` / ``job_from_wire``. Building the
dataclasses directly is for trusted local code (tests, factories); ``job_to_wire`` re-checks the
result, so an invalid hand-built spec can never be sent.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Literal

from p2pmesh.core import codec, strictjson
from p2pmesh.core.service import (
    ServiceSpec,
    check_service,
    check_service_job,
    service_document,
    service_wire,
)
from p2pmesh.core.strictjson import field_path
from p2pmesh.core.strictjson import show as _show
from p2pmesh.errors import DecodeError, JobSpecError

__all__ = [
    "FIELDS",
    "MAX_INPUT_BYTES",
    "MAX_JOB_TEXT_BYTES",
    "MAX_TOTAL_INPUT_BYTES",
    "MAX_WIRE_BYTES",
    "SCHEMA_VERSION",
    "WIRE_SCHEMA_VERSION",
    "InputRef",
    "JobSpec",
    "Resources",
    "ValidationRule",
    "WireJob",
    "decimal_of",
    "default_deadline_s",
    "field_path",
    "job_digest",
    "job_from_json_text",
    "job_from_wire",
    "job_to_document",
    "job_to_wire",
    "parse_job",
    "read_job_json",
]

SCHEMA_VERSION = 1  # of the job file
# Of the wire form (docs/PROTOCOL.md §7.11). 2: tolerances became integer decimals [m, e]
# instead of Python repr() strings, which other languages spell differently ("1e-9"). A node
# of version 1 refuses version 2 ("unsupported version") instead of misreading it. We still
# read version 1 (keeping its bytes, hence its digest), so jobs stored before the upgrade and
# offers of requesters not yet upgraded still read; we only write the newest.
# 3: the job names its image's ID (``image_id``, the sha256 of the image config) besides its
# name, so every replica runs the same bits and a worker can fetch the image by content. A
# version 2 node refuses version 3 instead of running whatever its engine calls the name.
WIRE_SCHEMA_VERSION = 3
LEGACY_WIRE_SCHEMA_VERSION = 1
IMAGE_ID_WIRE_VERSION = 3
_WIRE_VERSIONS = (LEGACY_WIRE_SCHEMA_VERSION, 2, WIRE_SCHEMA_VERSION)
_LEGACY_DECIMAL_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?", re.ASCII)
_LEGACY_TOLERANCE_CHARS = 32

# --- limits (docs/JOBS.md "Fields"). Each keeps a hostile offer cheap to hold and check. ---------
MAX_JOB_TEXT_BYTES = 256 * 1024  # a job file is a description, not a data carrier
MAX_JSON_DEPTH = 32  # job files nest 3 levels; the margin only keeps the reader's stack small
MAX_NUMBER_CHARS = 64  # longer literals are typos or attacks; Python's int() is quadratic on them
MAX_NAME_CHARS = 64
MAX_IMAGE_CHARS = 255  # Docker's own limit on a repository name
MAX_ARGS = 64
MAX_ARG_CHARS = 4096
MAX_COMMAND_BYTES = 16 * 1024  # well under Linux ARG_MAX; keeps offers small
MAX_ENV_VARS = 64
MAX_ENV_NAME_CHARS = 128
MAX_ENV_VALUE_BYTES = 4 * 1024
MAX_ENV_BYTES = 16 * 1024  # all NAME=value pairs together: bounds the offer size
RESERVED_ENV_PREFIX = "P2PMESH_"  # the executor sets these inside the container
MAX_INPUTS = 64
MAX_INPUT_NAME_CHARS = 255  # one Linux path component; names with parts are capped as a whole
MAX_INPUT_PATH_CHARS = 4096  # Linux PATH_MAX
MAX_INPUT_BYTES = 1024**3  # per input blob; bigger data belongs in a data service, not an offer
MAX_TOTAL_INPUT_BYTES = 4 * 1024**3
MAX_CPUS = 256
MAX_RAM_GB = 4096
MAX_GPUS = 16
MAX_GPU_MEMORY_GB = 4096
MAX_DISK_GB = 16 * 1024
MAX_TIMEOUT_S = 86_400  # one day per run; longer work should checkpoint into several jobs
MAX_DEADLINE_S = 7 * 86_400
MAX_CREDITS = 10**12  # far above any real price; keeps sums of prices inside 64-bit ints
MAX_REDUNDANCY = 9
MAX_LABELS = 32
MAX_LABEL_KEY_CHARS = 64
MAX_LABEL_VALUE_CHARS = 256
MAX_GLOBS = 32
MAX_GLOB_CHARS = 255
# Tolerances travel as exact decimals m × 10^e. 15 significant digits and the range 1e-300 ..
# 1e300 are where every binary64 reader agrees: each such decimal is the shortest spelling of
# the double nearest to it, so the wire decimal and the double determine each other.
MAX_TOLERANCE_DIGITS = 15
MAX_TOLERANCE = 10**300
MAX_TOLERANCE_EXPONENT = 400  # beyond it no 15-digit mantissa lands inside the range
# The wire job rides inside a signed offer (core/auction/messages.py) that must fit
# codec.MAX_MESSAGE_BYTES (64 KiB); 48 KiB leaves 16 KiB for the envelope, ids, the requester's
# addresses (≤ 16 × 256 B) and the exclude list (≤ 64 × 64 B), about 9 KiB at most.
MAX_WIRE_BYTES = 48 * 1024
MAX_PROBLEMS = 100  # a report longer than this only buries the first mistake

# --- defaults (docs/JOBS.md) ---------------------------------------------------------------------
DEFAULT_TIMEOUT_S = 600
DEFAULT_REDUNDANCY = 2  # cross-validated by default: one honest-looking result proves nothing
DEFAULT_TARGET_ERROR = 1e-4
DEFAULT_NUMERIC_FILES = ("**",)

MILLI = 1000
MIB_PER_GIB = 1024

Redundancy = int | Literal["auto"]
ValidationMode = Literal["exact", "numeric"]
NetworkMode = Literal["none", "bridge"]
InputKind = Literal["file", "dir"]

FIELDS = (
    "schema_version",
    "name",
    "image",
    "image_id",
    "command",
    "env",
    "inputs",
    "resources",
    "timeout_s",
    "deadline_s",
    "max_price",
    "budget",
    "redundancy",
    "validation",
    "network",
    "labels",
    "service",
)
_REQUIRED = frozenset({"schema_version", "name", "image", "command", "max_price", "budget"})
_RESOURCE_FIELDS = ("cpus", "ram_gb", "gpus", "gpu_memory_gb", "disk_gb")
_WIRE_RESOURCE_FIELDS = ("millicpus", "ram_mib", "gpus", "gpu_memory_mib", "disk_mib")
_NUMERIC_FIELDS = ("mode", "rel_tol", "abs_tol", "files", "target_error")
_INPUT_REF_FIELDS = ("digest", "size", "kind")

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:-]{0,63}", re.ASCII)
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

# Image references, written from the grammar in the distribution/reference docs:
# [host[:port]/]path[:tag][@sha256:hex], path components lowercase alphanumerics joined by
# '.', '_', '__' or runs of '-'.
_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_HOST_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
# As in Docker, a first component is a host only with a '.' or a port, or as "localhost":
# "team/app" is a path on the default registry and "Team/app" is an error, not a host "Team".
_HOST = (
    rf"(?:localhost|{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})+)(?::[0-9]+)?"
    rf"|{_HOST_COMPONENT}:[0-9]+"
)
_IMAGE_RE = re.compile(
    rf"(?:(?:{_HOST})/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?",
    re.ASCII,
)


# --- the spec ------------------------------------------------------------------------------------


def _freeze(mapping: Mapping[str, str]) -> Mapping[str, str]:
    # Sorted so iteration (CLI listings, logs) is stable; read-only so a frozen spec stays frozen.
    return MappingProxyType({k: mapping[k] for k in sorted(mapping)})


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    """What one replica needs, in exact integer units (``cpus`` etc. are derived views)."""

    millicpus: int = 1 * MILLI
    ram_mib: int = 1 * MIB_PER_GIB
    gpus: int = 0
    gpu_memory_mib: int = 0  # per GPU: the least memory each granted GPU must have
    disk_mib: int = 1 * MIB_PER_GIB

    @property
    def cpus(self) -> float:
        return self.millicpus / MILLI

    @property
    def ram_gb(self) -> float:
        return self.ram_mib / MIB_PER_GIB

    @property
    def gpu_memory_gb(self) -> float:
        return self.gpu_memory_mib / MIB_PER_GIB

    @property
    def disk_gb(self) -> float:
        return self.disk_mib / MIB_PER_GIB


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationRule:
    """How replicas' outputs are compared. ``rel_tol``/``abs_tol``/``files`` apply to numeric."""

    mode: ValidationMode = "exact"
    rel_tol: float = 0.0
    abs_tol: float = 0.0
    files: tuple[str, ...] = ()
    target_error: float = DEFAULT_TARGET_ERROR

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(self.files))


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """A checked job. ``inputs`` maps a name under ``/in`` to where its bytes come from: the
    path written in the job file (relative to its folder) or, for a job received from a peer,
    the content digest. Compare specs with ``==``; identify jobs on the mesh with
    ``job_digest``."""

    schema_version: int = SCHEMA_VERSION
    name: str
    image: str
    # sha256 of the image config (what ``docker images --no-trunc`` shows as IMAGE ID); "" when
    # not known yet (a job file before ``offer`` resolves it, a job of wire version 1 or 2) or
    # when the image is pinned by a registry digest instead.
    image_id: str = ""
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    timeout_s: int = DEFAULT_TIMEOUT_S
    deadline_s: int = 0  # 0: default_deadline_s(timeout_s)
    max_price: int
    budget: int
    redundancy: Redundancy = DEFAULT_REDUNDANCY
    validation: ValidationRule = field(default_factory=ValidationRule)
    network: NetworkMode = "none"
    labels: Mapping[str, str] = field(default_factory=dict)
    service: ServiceSpec | None = None  # a long-lived session (core/service.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "env", _freeze(self.env))
        object.__setattr__(self, "inputs", _freeze(self.inputs))
        object.__setattr__(self, "labels", _freeze(self.labels))
        if self.deadline_s == 0:
            object.__setattr__(self, "deadline_s", default_deadline_s(self.timeout_s))

    def __hash__(self) -> int:
        # The generated hash would choke on the read-only mappings; these fields are enough
        # to spread specs and agree with ==.
        return hash((self.name, self.image, self.command, self.max_price))


@dataclass(frozen=True, slots=True)
class InputRef:
    """One input as peers see it: the blob's digest and size, and whether it unpacks to a folder
    (then the blob is the packed archive and ``size`` its length)."""

    digest: str
    size: int
    kind: InputKind


@dataclass(frozen=True, slots=True)
class WireJob:
    """A job decoded from the wire: the spec (``inputs`` values are digests) and its inputs."""

    spec: JobSpec
    input_refs: Mapping[str, InputRef]
    # The canonical encoding of the wire form, made (and checked) once: a job is encoded for
    # every offer, persisted on every change of its state and hashed for every message that
    # names it. ``job_from_wire`` fills it from the bytes it has just checked.
    _encoded: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "input_refs", MappingProxyType(dict(sorted(self.input_refs.items())))
        )

    def __hash__(self) -> int:
        return hash(self.spec)

    @property
    def encoded(self) -> bytes:
        """Canonical msgpack of the wire form (raises ``JobSpecError`` like ``job_to_wire``)."""
        if self._encoded is None:
            object.__setattr__(
                self, "_encoded", codec.encode(job_to_wire(self.spec, self.input_refs))
            )
        assert self._encoded is not None
        return self._encoded

    def wire(self) -> dict[str, Any]:
        """A fresh copy of the wire form (``job_to_wire``), to embed in a message."""
        wire: dict[str, Any] = codec.decode(self.encoded)
        return wire

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.encoded).hexdigest()


def default_deadline_s(timeout_s: int) -> int:
    """Room for an auction, input transfer and a couple of re-runs after a no-show."""
    return min(MAX_DEADLINE_S, max(timeout_s, 3 * timeout_s + 600))


# --- problem collection --------------------------------------------------------------------------


class _Bad:
    """Marks a field that already has a problem, so cross-field checks skip it."""


_BAD: Any = _Bad()
_MISSING: Any = object()


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> Any:
        self.items.append(f"{path}: {message}")
        return _BAD

    def fail(self, path: str, message: str) -> bool:
        """``add`` for loops that track an ``ok`` flag."""
        self.add(path, message)
        return False

    def raise_if_any(self) -> None:
        if self.items:
            items = self.items
            if len(items) > MAX_PROBLEMS:
                extra = len(items) - MAX_PROBLEMS
                items = [*items[:MAX_PROBLEMS], f"job: {extra} more problems not shown"]
            raise JobSpecError(items)


def _is_int(value: object) -> bool:
    # bool is an int subclass in Python; `true` is never a count or a price.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _utf8_len(text: str) -> int | None:
    """UTF-8 length, or None for text that cannot be encoded (lone surrogates)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def _check_keys(p: _Problems, doc: Mapping[Any, Any], path: str, allowed: tuple[str, ...]) -> None:
    for key in doc:
        if not isinstance(key, str):
            p.add(path or "job", f"field names must be text, got {_show(key)}")
        elif key not in allowed:
            hint = ""
            if len(key) <= MAX_NAME_CHARS:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            p.add(field_path(path, key), f"unknown field{hint}")


def _int(p: _Problems, path: str, value: Any, lo: int, hi: int) -> Any:
    if not _is_int(value) or not lo <= value <= hi:
        return p.add(path, f"must be an integer from {lo} to {hi}, got {_show(value)}")
    return value


def _text(p: _Problems, path: str, value: Any, what: str = "text") -> Any:
    """Any str that can travel: UTF-8 encodable and free of NUL (C strings end there)."""
    if not isinstance(value, str):
        return p.add(path, f"must be {what}, got {_show(value)}")
    if _utf8_len(value) is None:
        return p.add(path, "must be valid Unicode text (no lone surrogates)")
    if "\x00" in value:
        return p.add(path, "must not contain NUL characters")
    return value


def _object(p: _Problems, path: str, value: Any) -> Any:
    if not isinstance(value, dict):
        return p.add(path, f"must be an object, got {_show(value)}")
    return value


# --- shared field checks (file and wire forms) ---------------------------------------------------


def _check_schema_version(p: _Problems, value: Any, *, wire: bool) -> Any:
    """The form's version; the spec always records the file version it corresponds to."""
    version = WIRE_SCHEMA_VERSION if wire else SCHEMA_VERSION
    if not _is_int(value):
        return p.add("schema_version", f"must be the integer {version}, got {_show(value)}")
    if value != version and not (wire and value in _WIRE_VERSIONS):
        return p.add("schema_version", f"unsupported version {value} (this node reads {version})")
    return SCHEMA_VERSION


def pinned_by_digest(image: str) -> bool:
    """Does the reference name its content (``name@sha256:…``), so any engine resolves it to
    the same bits without an image ID?"""
    return "@sha256:" in image


def _check_image_id_field(p: _Problems, doc: Mapping[Any, Any], version: int, *, wire: bool) -> Any:
    """``image_id``: optional in a file, absent before wire version 3, required from it."""
    value = doc.get("image_id", _MISSING)
    if wire and version < IMAGE_ID_WIRE_VERSION:
        if value is not _MISSING:
            return p.add("image_id", f"unknown field in wire version {version}")
        return ""
    if value is _MISSING:
        return p.add("image_id", "required") if wire else ""
    if not isinstance(value, str) or not (value == "" or _DIGEST_RE.fullmatch(value)):
        return p.add(
            "image_id",
            f'must be "sha256:" and 64 lowercase hex digits (the image ID), got {_show(value)}',
        )
    # "" stays possible on the wire (a job built by code, not offered from a file): a worker
    # then runs what its own engine holds under the name and cannot fetch it by content.
    return value


def _check_name(p: _Problems, value: Any) -> Any:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        return p.add(
            "name",
            f"must be 1..{MAX_NAME_CHARS} characters of A-Z a-z 0-9 . _ -, got {_show(value)}",
        )
    return value


def _check_image(p: _Problems, value: Any) -> Any:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_IMAGE_CHARS:
        return p.add("image", f"must be an image reference of 1..{MAX_IMAGE_CHARS} characters")
    if not _IMAGE_RE.fullmatch(value):
        return p.add(
            "image",
            f"{_show(value)} is not an image reference like "
            "'registry.example:5000/team/name:tag' or 'name@sha256:<64 hex>'",
        )
    return value


def _check_command(p: _Problems, value: Any) -> Any:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ARGS:
        return p.add("command", f"must be a list of 1..{MAX_ARGS} strings, got {_show(value)}")
    ok = True
    total = 0
    for i, arg in enumerate(value):
        path = f"command[{i}]"
        if _text(p, path, arg, "a string") is _BAD:
            ok = False
        elif len(arg) > MAX_ARG_CHARS:
            ok = p.fail(path, f"is {len(arg)} characters, limit {MAX_ARG_CHARS}")
        else:
            total += _utf8_len(arg) or 0
    if ok and value[0] == "":
        return p.add("command[0]", "the program must not be empty")
    if ok and total > MAX_COMMAND_BYTES:
        return p.add("command", f"is {total} bytes in all, limit {MAX_COMMAND_BYTES}")
    return tuple(value) if ok else _BAD


def _check_env(p: _Problems, value: Any) -> Any:
    if _object(p, "env", value) is _BAD:
        return _BAD
    if len(value) > MAX_ENV_VARS:
        return p.add("env", f"has {len(value)} variables, limit {MAX_ENV_VARS}")
    ok = True
    total = 0
    for name, val in value.items():
        if not isinstance(name, str):
            ok = p.fail("env", f"names must be text, got {_show(name)}")
            continue
        path = field_path("env", name)
        if not _ENV_NAME_RE.fullmatch(name) or len(name) > MAX_ENV_NAME_CHARS:
            ok = p.fail(
                path,
                f"is not a POSIX variable name ([A-Za-z_][A-Za-z0-9_]*, ≤ {MAX_ENV_NAME_CHARS})",
            )
        elif name.startswith(RESERVED_ENV_PREFIX):
            ok = p.fail(path, f"names starting {RESERVED_ENV_PREFIX} are reserved")
        if _text(p, path, val, "a string") is _BAD:
            ok = False
            continue
        size = _utf8_len(val) or 0
        if size > MAX_ENV_VALUE_BYTES:
            ok = p.fail(path, f"value is {size} bytes, limit {MAX_ENV_VALUE_BYTES}")
        total += len(name) + 1 + size
    if ok and total > MAX_ENV_BYTES:
        return p.add("env", f"is {total} bytes in all, limit {MAX_ENV_BYTES}")
    return dict(value) if ok else _BAD


def _check_input_name(p: _Problems, path: str, name: str) -> bool:
    if not 0 < len(name) <= MAX_INPUT_NAME_CHARS:
        p.add(path, f"input names must be 1..{MAX_INPUT_NAME_CHARS} characters")
        return False
    if _utf8_len(name) is None or _CONTROL_RE.search(name) or "\\" in name:
        p.add(
            path, "input names must not contain control characters, backslashes or lone surrogates"
        )
        return False
    if name.startswith("/"):
        p.add(path, "input names are relative to /in and must not start with '/'")
        return False
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        p.add(path, "input names must not contain empty, '.' or '..' parts")
        return False
    return True


def _check_overlaps(p: _Problems, names: list[str]) -> bool:
    # "data" and "data/x" cannot both be mounted: one would hide or break the other.
    ok = True
    present = set(names)
    for name in sorted(names):
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in present:
                ok = p.fail(field_path("inputs", name), f"lies inside input {parent!r}")
                break
    return ok


def _check_timeouts(p: _Problems, doc: Mapping[str, Any], *, wire: bool) -> tuple[Any, Any]:
    timeout = doc.get("timeout_s", _MISSING)
    if timeout is _MISSING:
        timeout = _MISSING if wire else DEFAULT_TIMEOUT_S
    timeout = _required(p, "timeout_s", timeout) or _int(p, "timeout_s", timeout, 1, MAX_TIMEOUT_S)
    deadline = doc.get("deadline_s", _MISSING)
    if deadline is _MISSING and not wire:
        if timeout is _BAD:
            return timeout, _BAD
        return timeout, default_deadline_s(timeout)
    deadline = _required(p, "deadline_s", deadline) or _int(
        p, "deadline_s", deadline, 1, MAX_DEADLINE_S
    )
    if timeout is not _BAD and deadline is not _BAD and deadline < timeout:
        deadline = p.add("deadline_s", f"must be ≥ timeout_s ({timeout}), got {deadline}")
    return timeout, deadline


def _required(p: _Problems, path: str, value: Any) -> Any:
    """``_BAD`` (after reporting) for a missing field, else None so ``or`` chains to the check."""
    if value is _MISSING:
        return p.add(path, "required")
    return None


def _check_redundancy(p: _Problems, value: Any) -> Any:
    if value == "auto" and isinstance(value, str):
        return "auto"
    if not _is_int(value) or not 1 <= value <= MAX_REDUNDANCY:
        return p.add(
            "redundancy",
            f'must be an integer from 1 to {MAX_REDUNDANCY} or "auto", got {_show(value)}',
        )
    return value


def _check_budget_covers(p: _Problems, max_price: Any, budget: Any, redundancy: Any) -> Any:
    # The requester pays up to max_price to each of `redundancy` workers, so a smaller budget
    # could never award the job. With "auto" the count is chosen later; one replica is the floor.
    if _BAD in (max_price, budget, redundancy):
        return budget
    replicas = 1 if redundancy == "auto" else redundancy
    if budget < max_price * replicas:
        what = (
            "max_price" if replicas == 1 else f"max_price × redundancy ({max_price} × {replicas})"
        )
        return p.add("budget", f"must be ≥ {what} = {max_price * replicas}, got {budget}")
    return budget


def _check_network(p: _Problems, value: Any) -> Any:
    if value not in ("none", "bridge") or not isinstance(value, str):
        return p.add("network", f'must be "none" or "bridge", got {_show(value)}')
    return value


def _check_labels(p: _Problems, value: Any) -> Any:
    if _object(p, "labels", value) is _BAD:
        return _BAD
    if len(value) > MAX_LABELS:
        return p.add("labels", f"has {len(value)} labels, limit {MAX_LABELS}")
    ok = True
    for key, val in value.items():
        if not isinstance(key, str) or not _LABEL_KEY_RE.fullmatch(key):
            ok = p.fail(
                field_path("labels", key) if isinstance(key, str) else "labels",
                f"label keys must be 1..{MAX_LABEL_KEY_CHARS} characters of "
                "A-Z a-z 0-9 . _ / : - starting with a letter or digit",
            )
            continue
        path = field_path("labels", key)
        if _text(p, path, val, "a string") is _BAD:
            ok = False
        elif len(val) > MAX_LABEL_VALUE_CHARS or _CONTROL_RE.search(val):
            ok = p.fail(
                path, f"must be ≤ {MAX_LABEL_VALUE_CHARS} characters without control characters"
            )
    return dict(value) if ok else _BAD


def _check_globs(p: _Problems, value: Any) -> Any:
    path = "validation.files"
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_GLOBS:
        return p.add(path, f"must be a list of 1..{MAX_GLOBS} glob patterns, got {_show(value)}")
    ok = True
    for i, glob in enumerate(value):
        item = f"{path}[{i}]"
        if _text(p, item, glob, "a glob pattern") is _BAD:
            ok = False
        elif (
            not 0 < len(glob) <= MAX_GLOB_CHARS
            or glob.startswith("/")
            or _CONTROL_RE.search(glob)
            or any(part in ("", ".", "..") for part in glob.split("/"))
        ):
            ok = p.fail(
                item,
                f"must be a relative glob under /out of 1..{MAX_GLOB_CHARS} characters "
                "without empty, '.' or '..' parts",
            )
    return tuple(value) if ok else _BAD


def decimal_of(number: float) -> tuple[int, int]:
    """``(m, e)`` with ``number`` = m × 10^e: the shortest decimal that reads back as ``number``
    (``repr``'s digits), with no trailing zeros in m, and ``(0, 0)`` for zero."""
    if number == 0:
        return 0, 0
    parts = Decimal(repr(number)).normalize().as_tuple()
    mantissa = int("".join(map(str, parts.digits)))
    assert isinstance(parts.exponent, int)  # finite: callers pass finite numbers only
    return (-mantissa if parts.sign else mantissa), parts.exponent


def _check_tolerance(p: _Problems, path: str, value: Any, *, wire: int) -> Any:
    """A tolerance ≥ 0: a JSON number in the file (``wire`` 0), a decimal ``[m, e]`` on the
    wire (version 2), a ``repr()`` string in wire version 1."""
    if wire == LEGACY_WIRE_SCHEMA_VERSION:
        return _check_legacy_tolerance(p, path, value)
    if wire:
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(_is_int(x) and -(2**63) <= x < 2**63 for x in value)
        ):
            return p.add(path, f"must be a decimal [mantissa, exponent], got {_show(value)}")
        mantissa, exponent = value
        if mantissa == 0 and exponent != 0:
            return p.add(path, f"zero must be written [0, 0], got [0, {exponent}]")
        if mantissa != 0 and mantissa % 10 == 0:
            return p.add(path, f"the mantissa must not end in 0, got {mantissa}")
        # Before any arithmetic: 10 ** e for a hostile e near 2^63 would never finish.
        if not -MAX_TOLERANCE_EXPONENT <= exponent <= MAX_TOLERANCE_EXPONENT:
            return p.add(
                path, f"must be 0 or from 1e-300 to 1e300, got {_show_decimal(mantissa, exponent)}"
            )
    elif not _is_number(value):
        return p.add(path, f"must be a number ≥ 0, got {_show(value)}")
    elif _is_int(value) and abs(value) > MAX_TOLERANCE:  # float() would overflow on it
        return p.add(path, f"must be 0 or from 1e-300 to 1e300, got {_show(value)}")
    else:
        # + 0.0 turns -0.0 into 0.0: equal specs must not differ in spelling (and digest).
        mantissa, exponent = decimal_of(float(value) + 0.0)
    exact = Fraction(mantissa) * Fraction(10) ** exponent
    if exact < 0:
        return p.add(path, f"must be a number ≥ 0, got {_show_decimal(mantissa, exponent)}")
    if exact != 0 and not Fraction(1, MAX_TOLERANCE) <= exact <= MAX_TOLERANCE:
        return p.add(
            path, f"must be 0 or from 1e-300 to 1e300, got {_show_decimal(mantissa, exponent)}"
        )
    if len(str(mantissa)) > MAX_TOLERANCE_DIGITS:
        return p.add(
            path,
            f"has more than {MAX_TOLERANCE_DIGITS} significant digits "
            f"({_show_decimal(mantissa, exponent)})",
        )
    # In this range and precision the decimal is the shortest spelling of its double, so the
    # float and the wire decimal determine each other and one spec has one wire form.
    # (Checked, not assumed: a receiver must refuse, never crash, whatever the argument.)
    number = float(f"{mantissa}e{exponent}")
    if decimal_of(number) != (mantissa, exponent):
        return p.add(path, f"is not the shortest spelling of {number!r}")
    return number


def _check_legacy_tolerance(p: _Problems, path: str, value: Any) -> Any:
    """Wire version 1: the text Python's repr() gives for the float, and nothing else."""
    if (
        not isinstance(value, str)
        or len(value) > _LEGACY_TOLERANCE_CHARS
        or not _LEGACY_DECIMAL_RE.fullmatch(value)
    ):
        return p.add(path, f"must be a decimal string (wire version 1), got {_show(value)}")
    number = float(value) + 0.0
    if not math.isfinite(number) or number < 0 or repr(number) != value:
        return p.add(path, f"must be a number ≥ 0 written as {repr(number)!r}, got {_show(value)}")
    return number


def _show_decimal(mantissa: int, exponent: int) -> str:
    return f"{mantissa}e{exponent}" if exponent else str(mantissa)


def _check_validation(p: _Problems, value: Any, *, wire: int) -> Any:
    if _object(p, "validation", value) is _BAD:
        return _BAD
    mode = value.get("mode", _MISSING)
    if mode is _MISSING:
        return p.add("validation.mode", 'required ("exact" or "numeric")')
    if not isinstance(mode, str) or mode not in ("exact", "numeric"):
        return p.add("validation.mode", f'must be "exact" or "numeric", got {_show(mode)}')
    allowed = ("mode", "target_error") if mode == "exact" else _NUMERIC_FIELDS
    _check_keys(p, value, "validation", allowed)
    before = len(p.items)

    def get(key: str, default: Any) -> Any:
        got = value.get(key, _MISSING)
        if got is _MISSING:
            return p.add(f"validation.{key}", "required") if wire else default
        return got

    target = get("target_error", DEFAULT_TARGET_ERROR)
    if target is not _BAD:
        target = _check_tolerance(p, "validation.target_error", target, wire=wire)
        if target is not _BAD and not 0 < target < 1:
            target = p.add(
                "validation.target_error", f"must be a number in (0, 1), got {_show(target)}"
            )
    if mode == "exact":
        rule = ValidationRule(mode="exact", target_error=target) if target is not _BAD else _BAD
        return rule if len(p.items) == before else _BAD
    rel = get("rel_tol", 0.0)
    rel = rel if rel is _BAD else _check_tolerance(p, "validation.rel_tol", rel, wire=wire)
    if rel is not _BAD and rel > 1:
        rel = p.add("validation.rel_tol", f"must be ≤ 1 (100 %), got {_show(rel)}")
    abs_ = get("abs_tol", 0.0)
    abs_ = abs_ if abs_ is _BAD else _check_tolerance(p, "validation.abs_tol", abs_, wire=wire)
    files = get("files", list(DEFAULT_NUMERIC_FILES))
    files = files if files is _BAD else _check_globs(p, files)
    if len(p.items) != before:
        return _BAD
    return ValidationRule(
        mode="numeric", rel_tol=rel, abs_tol=abs_, files=files, target_error=target
    )


# --- the job file form ---------------------------------------------------------------------------


def _gib_to_mib(value: int | float) -> int:
    return _to_units(value, MIB_PER_GIB)


def _to_units(value: int | float, scale: int) -> int:
    """``value × scale`` rounded up: a job gets at least what it asked for. Decimal(repr()) so
    0.1 GiB is read as the 0.1 the user wrote, not the binary float just above or below it."""
    exact = (Decimal(value) if isinstance(value, int) else Decimal(repr(value))) * scale
    return int(exact.to_integral_value(rounding=ROUND_CEILING))


def _check_resources(p: _Problems, value: Any) -> Any:
    if value is _MISSING:
        return Resources()
    if _object(p, "resources", value) is _BAD:
        return _BAD
    _check_keys(p, value, "resources", _RESOURCE_FIELDS)
    before = len(p.items)

    def number(key: str, default: float, lo_open: bool, hi: float) -> Any:
        got = value.get(key, default)
        op = ">" if lo_open else "≥"
        if not _is_number(got) or got < 0 or (lo_open and got == 0) or got > hi:
            return p.add(
                f"resources.{key}", f"must be a number {op} 0 and ≤ {hi}, got {_show(got)}"
            )
        return got

    cpus = number("cpus", 1, True, MAX_CPUS)
    ram = number("ram_gb", 1, True, MAX_RAM_GB)
    gpus = value.get("gpus", 0)
    gpus = _int(p, "resources.gpus", gpus, 0, MAX_GPUS)
    gpu_mem = number("gpu_memory_gb", 0, False, MAX_GPU_MEMORY_GB)
    disk = number("disk_gb", 1, True, MAX_DISK_GB)
    if gpus == 0 and gpu_mem not in (_BAD, 0):
        gpu_mem = p.add("resources.gpu_memory_gb", "must be 0 when resources.gpus is 0")
    if len(p.items) != before:
        return _BAD
    return Resources(
        millicpus=_to_units(cpus, MILLI),
        ram_mib=_gib_to_mib(ram),
        gpus=gpus,
        gpu_memory_mib=_gib_to_mib(gpu_mem),
        disk_mib=_gib_to_mib(disk),
    )


def _check_file_inputs(p: _Problems, value: Any) -> Any:
    if value is _MISSING:
        return {}
    if _object(p, "inputs", value) is _BAD:
        return _BAD
    if len(value) > MAX_INPUTS:
        return p.add("inputs", f"has {len(value)} inputs, limit {MAX_INPUTS}")
    ok = True
    names: list[str] = []
    for name, source in value.items():
        if not isinstance(name, str):
            ok = p.fail("inputs", f"names must be text, got {_show(name)}")
            continue
        path = field_path("inputs", name)
        if _check_input_name(p, path, name):
            names.append(name)
        else:
            ok = False
        if _text(p, path, source, "a path relative to the job file") is _BAD:
            ok = False
        elif not 0 < len(source) <= MAX_INPUT_PATH_CHARS:
            ok = p.fail(path, f"the path must be 1..{MAX_INPUT_PATH_CHARS} characters")
    ok = _check_overlaps(p, names) and ok
    return dict(value) if ok else _BAD


def _check_fields(p: _Problems, doc: Any, *, wire: bool) -> dict[str, Any] | None:
    """Every check of one form; the values (``_BAD`` where a problem was reported) or None."""
    if not isinstance(doc, dict):
        p.add("job", f"must be a JSON object, got {_show(doc)}")
        return None
    _check_keys(p, doc, "", FIELDS)

    def get(key: str, default: Any = _MISSING) -> Any:
        got = doc.get(key, _MISSING)
        if got is _MISSING and (wire or key in _REQUIRED):
            return p.add(key, "required")
        return default if got is _MISSING else got

    out: dict[str, Any] = {}
    v = get("schema_version")
    out["schema_version"] = v if v is _BAD else _check_schema_version(p, v, wire=wire)
    # Which wire version the rest is read as (0: the file); a bad version reads as the newest.
    out["wire_version"] = 0
    if wire:
        out["wire_version"] = v if v in _WIRE_VERSIONS and _is_int(v) else WIRE_SCHEMA_VERSION
    v = get("name")
    out["name"] = v if v is _BAD else _check_name(p, v)
    v = get("image")
    out["image"] = v if v is _BAD else _check_image(p, v)
    out["image_id"] = _check_image_id_field(p, doc, out["wire_version"], wire=wire)
    v = get("command")
    out["command"] = v if v is _BAD else _check_command(p, v)
    v = get("env", {})
    out["env"] = v if v is _BAD else _check_env(p, v)
    if wire:
        v = get("inputs")
        out["inputs"] = v if v is _BAD else _check_wire_inputs(p, v)
        v = get("resources")
        out["resources"] = v if v is _BAD else _check_wire_resources(p, v)
    else:
        out["inputs"] = _check_file_inputs(p, doc.get("inputs", _MISSING))
        out["resources"] = _check_resources(p, doc.get("resources", _MISSING))
    out["timeout_s"], out["deadline_s"] = _check_timeouts(p, doc, wire=wire)
    v = get("max_price")
    out["max_price"] = v if v is _BAD else _int(p, "max_price", v, 0, MAX_CREDITS)
    v = get("budget")
    out["budget"] = v if v is _BAD else _int(p, "budget", v, 0, MAX_CREDITS)
    # A service runs once, so its file may leave redundancy out (core/service.py).
    v = get("redundancy", 1 if "service" in doc else DEFAULT_REDUNDANCY)
    out["redundancy"] = v if v is _BAD else _check_redundancy(p, v)
    out["budget"] = _check_budget_covers(p, out["max_price"], out["budget"], out["redundancy"])
    v = get("validation", {"mode": "exact"})
    out["validation"] = v if v is _BAD else _check_validation(p, v, wire=out["wire_version"])
    v = get("network", "none")
    out["network"] = v if v is _BAD else _check_network(p, v)
    v = get("labels", {})
    out["labels"] = v if v is _BAD else _check_labels(p, v)
    out["service"] = _check_service(p, doc, out["redundancy"], wire=wire)
    return out


def _check_service(p: _Problems, doc: dict[str, Any], redundancy: Any, *, wire: bool) -> Any:
    # Optional on the wire too: a job without it is the batch job it always was (same bytes).
    if "service" not in doc:
        return None
    spec, problems = check_service(doc["service"], wire=wire)
    problems += [] if redundancy is _BAD else check_service_job(spec, redundancy)
    if doc.get("network", "none") != "none":
        # Its port is reached through the worker's tunnel, never through a network of its own.
        problems.append(("network", 'a service job keeps network "none"'))
    for path, message in problems:
        p.add(path, message)
    return _BAD if problems else spec


def _build(values: dict[str, Any], inputs: Mapping[str, str]) -> JobSpec:
    return JobSpec(
        schema_version=values["schema_version"],
        name=values["name"],
        image=values["image"],
        image_id=values["image_id"],
        command=values["command"],
        env=values["env"],
        inputs=inputs,
        resources=values["resources"],
        timeout_s=values["timeout_s"],
        deadline_s=values["deadline_s"],
        max_price=values["max_price"],
        budget=values["budget"],
        redundancy=values["redundancy"],
        validation=values["validation"],
        network=values["network"],
        labels=values["labels"],
        service=values["service"],
    )


def parse_job(doc: object) -> JobSpec:
    """Check a decoded job file and return its spec.

    Args:
        doc: the job file as parsed JSON (a dict for a well-formed file).

    Returns:
        The spec, with defaults filled in and sizes in integer units.

    Raises:
        JobSpecError: listing every problem found, one ``field: message`` per entry.
    """
    p = _Problems()
    values = _check_fields(p, doc, wire=False)
    if values is not None and not p.items:
        # A valid file could still overflow an offer (many long args + env + inputs at once).
        size = _wire_size_bound(_build(values, values["inputs"]))
        if size > MAX_WIRE_BYTES:
            p.add("job", f"encodes to {size} bytes on the wire, limit {MAX_WIRE_BYTES}")
    p.raise_if_any()
    assert values is not None  # raise_if_any raised otherwise
    return _build(values, values["inputs"])


def job_to_document(spec: JobSpec) -> dict[str, Any]:
    """The spec in job-file form (JSON-ready); ``parse_job`` of it gives ``spec`` back."""
    r = spec.resources
    v = spec.validation
    validation: dict[str, Any] = {"mode": v.mode, "target_error": v.target_error}
    if v.mode == "numeric":
        validation.update(rel_tol=v.rel_tol, abs_tol=v.abs_tol, files=list(v.files))
    return {
        "schema_version": spec.schema_version,
        "name": spec.name,
        "image": spec.image,
        **({"image_id": spec.image_id} if spec.image_id else {}),
        "command": list(spec.command),
        "env": dict(spec.env),
        "inputs": dict(spec.inputs),
        "resources": {
            "cpus": _from_units(r.millicpus, MILLI),
            "ram_gb": _from_units(r.ram_mib, MIB_PER_GIB),
            "gpus": r.gpus,
            "gpu_memory_gb": _from_units(r.gpu_memory_mib, MIB_PER_GIB),
            "disk_gb": _from_units(r.disk_mib, MIB_PER_GIB),
        },
        "timeout_s": spec.timeout_s,
        "deadline_s": spec.deadline_s,
        "max_price": spec.max_price,
        "budget": spec.budget,
        "redundancy": spec.redundancy,
        "validation": validation,
        "network": spec.network,
        "labels": dict(spec.labels),
        **({} if spec.service is None else {"service": service_document(spec.service)}),
    }


def _from_units(amount: int, scale: int) -> int | float:
    return amount // scale if amount % scale == 0 else amount / scale


# --- JSON text -----------------------------------------------------------------------------------


def read_job_json(text: str) -> tuple[object, list[str]]:
    """Strict JSON of a job file (``core/strictjson.py``): the document and its duplicate-key
    problems.

    Raises:
        JobSpecError: the text is too long or is not JSON (one problem with line and column).
    """
    if not isinstance(text, str):
        raise JobSpecError([f"job: expected text, got {_show(text)}"])
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_JOB_TEXT_BYTES:
        raise JobSpecError([f"job: file is {size} bytes, limit {MAX_JOB_TEXT_BYTES}"])
    try:
        # Windows editors like to start UTF-8 files with a byte-order mark; it carries no meaning.
        doc, duplicates = strictjson.read(
            text.removeprefix("\ufeff"),
            max_depth=MAX_JSON_DEPTH,
            max_number_chars=MAX_NUMBER_CHARS,
        )
    except strictjson.JsonSyntaxError as exc:
        raise JobSpecError([f"json: {exc}"]) from None
    dups = [
        f"{d.path or 'job'}: duplicate field at line {d.line}, column {d.column}"
        for d in duplicates
    ]
    return doc, dups


def job_from_json_text(text: str) -> JobSpec:
    """Parse and check job-file text.

    Raises:
        JobSpecError: JSON errors and duplicate fields (with line and column) and every field
        problem, together.
    """
    doc, problems = read_job_json(text)
    try:
        spec = parse_job(doc)
    except JobSpecError as exc:
        raise JobSpecError([*problems, *exc.problems]) from None
    if problems:
        raise JobSpecError(problems)
    return spec


# --- the wire form -------------------------------------------------------------------------------


def _check_wire_resources(p: _Problems, value: Any) -> Any:
    if _object(p, "resources", value) is _BAD:
        return _BAD
    _check_keys(p, value, "resources", _WIRE_RESOURCE_FIELDS)
    before = len(p.items)
    limits = {
        "millicpus": (1, MAX_CPUS * MILLI),
        "ram_mib": (1, MAX_RAM_GB * MIB_PER_GIB),
        "gpus": (0, MAX_GPUS),
        "gpu_memory_mib": (0, MAX_GPU_MEMORY_GB * MIB_PER_GIB),
        "disk_mib": (1, MAX_DISK_GB * MIB_PER_GIB),
    }
    got: dict[str, Any] = {}
    for key, (lo, hi) in limits.items():
        path = f"resources.{key}"
        raw = value.get(key, _MISSING)
        got[key] = _required(p, path, raw) or _int(p, path, raw, lo, hi)
    if got["gpus"] == 0 and got["gpu_memory_mib"] not in (_BAD, 0):
        p.add("resources.gpu_memory_mib", "must be 0 when resources.gpus is 0")
    if len(p.items) != before:
        return _BAD
    return Resources(**got)


def _check_wire_inputs(p: _Problems, value: Any) -> Any:
    if _object(p, "inputs", value) is _BAD:
        return _BAD
    if len(value) > MAX_INPUTS:
        return p.add("inputs", f"has {len(value)} inputs, limit {MAX_INPUTS}")
    before = len(p.items)
    refs: dict[str, InputRef] = {}
    total = 0
    for name, ref in value.items():
        if not isinstance(name, str):
            p.add("inputs", f"names must be text, got {_show(name)}")
            continue
        path = field_path("inputs", name)
        if not _check_input_name(p, path, name) or _object(p, path, ref) is _BAD:
            continue
        _check_keys(p, ref, path, _INPUT_REF_FIELDS)
        digest, size, kind = (ref.get(k, _MISSING) for k in _INPUT_REF_FIELDS)
        if digest is _MISSING:
            p.add(f"{path}.digest", "required")
        elif not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
            p.add(
                f"{path}.digest",
                f'must be "sha256:" and 64 lowercase hex digits, got {_show(digest)}',
            )
        size = _required(p, f"{path}.size", size) or _int(
            p, f"{path}.size", size, 0, MAX_INPUT_BYTES
        )
        if kind is _MISSING:
            p.add(f"{path}.kind", "required")
        elif kind not in ("file", "dir") or not isinstance(kind, str):
            p.add(f"{path}.kind", f'must be "file" or "dir", got {_show(kind)}')
        if len(p.items) == before:
            total += size
            refs[name] = InputRef(digest=digest, size=size, kind=kind)
    if len(p.items) == before and total > MAX_TOTAL_INPUT_BYTES:
        p.add("inputs", f"total {total} bytes, limit {MAX_TOTAL_INPUT_BYTES}")
    if len(p.items) == before and not _check_overlaps(p, list(refs)):
        return _BAD
    return refs if len(p.items) == before else _BAD


def _check_ref_value(p: _Problems, path: str, ref: object) -> None:
    if not isinstance(ref, InputRef):
        p.add(path, f"needs an InputRef, got {_show(ref)}")


def _wire(
    spec: JobSpec, refs: Mapping[str, InputRef], version: int = WIRE_SCHEMA_VERSION
) -> dict[str, Any]:
    r = spec.resources
    v = spec.validation
    # Version 1 is only ever re-encoded, to keep the bytes (and digest) of a job read in it.
    tolerance = _legacy_decimal if version == LEGACY_WIRE_SCHEMA_VERSION else _wire_decimal
    validation: dict[str, Any] = {"mode": v.mode, "target_error": tolerance(v.target_error)}
    if v.mode == "numeric":
        validation.update(
            rel_tol=tolerance(v.rel_tol), abs_tol=tolerance(v.abs_tol), files=list(v.files)
        )
    image_id = {"image_id": spec.image_id} if version >= IMAGE_ID_WIRE_VERSION else {}
    return {
        "schema_version": version,
        "name": spec.name,
        "image": spec.image,
        **image_id,
        "command": list(spec.command),
        "env": dict(spec.env),
        "inputs": {
            name: {"digest": ref.digest, "size": ref.size, "kind": ref.kind}
            for name, ref in refs.items()
        },
        "resources": {
            "millicpus": r.millicpus,
            "ram_mib": r.ram_mib,
            "gpus": r.gpus,
            "gpu_memory_mib": r.gpu_memory_mib,
            "disk_mib": r.disk_mib,
        },
        "timeout_s": spec.timeout_s,
        "deadline_s": spec.deadline_s,
        "max_price": spec.max_price,
        "budget": spec.budget,
        "redundancy": spec.redundancy,
        "validation": validation,
        "network": spec.network,
        "labels": dict(spec.labels),
        **({} if spec.service is None else {"service": service_wire(spec.service)}),
    }


def _wire_decimal(number: float) -> list[int]:
    return list(decimal_of(float(number) + 0.0))


def _legacy_decimal(number: float) -> str:
    return repr(float(number) + 0.0)


def _wire_size_bound(spec: JobSpec) -> int:
    """Encoded size with the largest possible ref for every input: refs are filled in later."""
    widest = InputRef(digest="sha256:" + "0" * 64, size=MAX_INPUT_BYTES, kind="file")
    wire = _wire(spec, dict.fromkeys(spec.inputs, widest))
    try:
        return len(codec.encode(wire))
    except DecodeError:  # over codec.MAX_MESSAGE_BYTES or a string over codec.MAX_STR_BYTES
        return codec.MAX_MESSAGE_BYTES + 1


def job_to_wire(spec: JobSpec, input_refs: Mapping[str, InputRef] | None = None) -> dict[str, Any]:
    """The canonical, float-free wire form of ``spec`` with its inputs named by content.

    Args:
        spec: a checked spec; its ``inputs`` values (local paths) are not sent.
        input_refs: one ``InputRef`` per name in ``spec.inputs`` (may be omitted when none).

    Raises:
        JobSpecError: the refs do not match the inputs, or ``spec`` was built by hand with
        values that ``job_from_wire`` would refuse.
    """
    refs = dict(input_refs or {})
    p = _Problems()
    for name in spec.inputs:
        if name not in refs:
            p.add(field_path("inputs", name), "has no content reference (digest, size, kind)")
    for name, ref in refs.items():
        if name not in spec.inputs:
            p.add(
                field_path("inputs", name), "has a content reference but is not an input of the job"
            )
        else:
            _check_ref_value(p, field_path("inputs", name), ref)
    p.raise_if_any()
    wire = _wire(spec, refs)
    checked = job_from_wire(wire)
    if checked.spec != _with_digests(spec, refs):
        # Only reachable for hand-built specs holding values that do not survive the wire.
        raise JobSpecError(["job: does not survive the wire form unchanged (non-canonical value)"])
    return wire


def _with_digests(spec: JobSpec, refs: Mapping[str, InputRef]) -> JobSpec:
    values = {name: getattr(spec, name) for name in FIELDS}
    values["inputs"] = {name: refs[name].digest for name in spec.inputs}
    return JobSpec(**values)


def job_from_wire(d: object) -> WireJob:
    """Check a wire job from an untrusted peer.

    Invariant (fuzzed): on any value, returns a ``WireJob`` or raises ``JobSpecError``.

    Returns:
        The spec (its ``inputs`` map each name to its digest) and the content references.

    Raises:
        JobSpecError: every problem, one ``field: message`` per entry.
    """
    p = _Problems()
    values = _check_fields(p, d, wire=True)
    encoded = b""
    if values is not None and not p.items:
        try:
            encoded = codec.encode(_wire_from_values(values))
            size = len(encoded)
        except DecodeError:  # over codec.MAX_MESSAGE_BYTES: a dict handed in, not decoded
            size = codec.MAX_MESSAGE_BYTES + 1
        if size > MAX_WIRE_BYTES:
            p.add("job", f"encodes to {size} bytes, limit {MAX_WIRE_BYTES}")
    p.raise_if_any()
    assert values is not None
    refs: dict[str, InputRef] = values["inputs"]
    spec = _build(values, {name: ref.digest for name, ref in refs.items()})
    job = WireJob(spec=spec, input_refs=refs)
    # These bytes are the wire form of exactly this spec and these refs (built from them).
    object.__setattr__(job, "_encoded", encoded)
    return job


def _wire_from_values(values: dict[str, Any]) -> dict[str, Any]:
    refs: dict[str, InputRef] = values["inputs"]
    spec = _build(values, {n: r.digest for n, r in refs.items()})
    return _wire(spec, refs, values["wire_version"])


def job_digest(spec: JobSpec, input_refs: Mapping[str, InputRef] | None = None) -> str:
    """``"sha256:" + hex`` of the canonical encoding of the wire form: the job's identity.

    Local input paths are not part of it; input contents are, through their digests.
    """
    return "sha256:" + hashlib.sha256(codec.encode(job_to_wire(spec, input_refs))).hexdigest()
