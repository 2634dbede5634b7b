"""The one exception tree of p2pmesh.

::

    MeshError                  root; a stable ``code`` and a one-line ``hint``
    ├── ConfigError            bad flags, config file, key file or node home
    ├── DecodeError            bytes from outside that do not decode within the limits
    ├── ValidationError        decoded but wrong: schema, signature, expiry, size, replay
    │   ├── JobSpecError       a job file with field problems (``problems``)
    │   └── PackingError       a folder or archive that cannot be packed/unpacked safely
    ├── TransportError         libp2p / socket trouble with a peer or the local daemon
    │   └── DaemonNotRunning   the CLI found no daemon behind the control socket
    ├── ExecutorError          the container engine failed (a job's own failure is data)
    └── StoreError             SQLite trouble

Remote misbehaviour never escapes the core as an exception: decoders raise ``DecodeError`` /
``ValidationError`` and the caller turns them into a dropped message and a counted reason.
"""

from __future__ import annotations


class MeshError(Exception):
    code = "mesh_error"
    hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(MeshError):
    code = "config"


class DecodeError(MeshError):
    code = "decode"


class ValidationError(MeshError):
    code = "invalid"


class JobSpecError(ValidationError):
    code = "job_spec"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class PackingError(ValidationError):
    code = "packing"


class TransportError(MeshError):
    code = "transport"


class DaemonNotRunning(TransportError):
    code = "no_daemon"


class ExecutorError(MeshError):
    code = "executor"


class StoreError(MeshError):
    code = "store"
