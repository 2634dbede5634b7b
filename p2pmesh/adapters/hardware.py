"""The node's hardware profile: CPUs, memory, disk, load, NVIDIA GPUs and working executors.

Theory of operation: ``profile()`` is called once at ``p2pmesh up`` (and by ``up --check``); its
result feeds the signed capability record and the readiness check. Every probe here talks to
something outside the process (psutil, the NVML shared library, the Docker engine), and a node
must still start when any of them is missing, so the probes never raise: they answer "nothing
found" together with a human-readable reason that the CLI can show.

NVML is reached through an injectable module (the ``nvml`` argument) so tests can hand in a fake
with any number of GPUs, or one that fails the way a machine without a driver does.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "DOCKER_UNREACHABLE",
    "MIN_DISK_FREE_MB",
    "GpuInfo",
    "HardwareProfile",
    "probe_docker",
    "probe_gpus",
    "profile",
    "profile_to_dict",
    "readiness",
]

_MIB = 1024 * 1024

DOCKER_UNREACHABLE = "Docker engine not reachable"
_DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"  # what the SDK uses without DOCKER_HOST

# A worker needs room in its home for fetched inputs and outputs of jobs (blob store) on top of
# the SQLite database; below about a GiB the first real job would fail half-way, which costs the
# requester a re-auction and this node reputation, so we say so before it bids at all.
MIN_DISK_FREE_MB = 1024


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One NVIDIA GPU as NVML reports it."""

    index: int
    name: str
    memory_mb: int  # total memory, MiB
    driver: str
    compute_capability: str  # "major.minor", e.g. "9.0"
    uuid: str


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """What this machine has, measured once. Sizes are MiB."""

    cpus_logical: int
    cpus_physical: int
    ram_mb: int
    ram_available_mb: int
    disk_free_mb: int  # on the file system that holds the node home
    load_1m: float
    gpus: tuple[GpuInfo, ...]
    executors: tuple[str, ...]  # executors that work here now, e.g. ("docker",)
    executor_problems: tuple[str, ...]  # why an executor is missing, one line each
    os: str
    arch: str
    python: str
    gpu_note: str = ""  # what the GPU probe found or why it found nothing


def _text(value: Any) -> str:
    # Older pynvml releases return bytes for names, UUIDs and versions; newer ones return str.
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def probe_gpus(*, nvml: Any = None) -> tuple[list[GpuInfo], str]:
    """List the NVIDIA GPUs through NVML.

    Args:
        nvml: a module with pynvml's API; ``None`` imports ``pynvml`` (package nvidia-ml-py).

    Returns:
        ``(gpus, note)``. With no library, no driver or an NVML failure before any device could be
        read, ``gpus`` is empty and ``note`` says why. A single device that fails (e.g. "GPU is
        lost") is left out and named in ``note``, so one bad card does not hide the others.
        Never raises.
    """
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError as exc:
            return [], f"no GPU probe: pynvml not installed ({_one_line(exc)})"
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return [], f"no NVIDIA GPU: NVML unavailable ({_one_line(exc)})"
    try:
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            return [], f"no NVIDIA GPU: NVML error ({_one_line(exc)})"
        gpus: list[GpuInfo] = []
        skipped: list[str] = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                gpus.append(
                    GpuInfo(
                        index=index,
                        name=_text(nvml.nvmlDeviceGetName(handle)),
                        memory_mb=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // _MIB,
                        driver=driver,
                        compute_capability=f"{int(major)}.{int(minor)}",
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    )
                )
            except Exception as exc:
                skipped.append(f"GPU {index} skipped ({_one_line(exc)})")
        if not gpus and not skipped:
            note = f"no NVIDIA GPU: driver {driver} reports none"
        else:
            note = f"{len(gpus)} NVIDIA GPU(s), driver {driver}"
        return gpus, "; ".join([note, *skipped])
    finally:
        # A failing shutdown cannot change the answer already made; the process goes on.
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _unix_socket_path(host: str) -> str | None:
    prefix = "unix://"
    return host[len(prefix) :] if host.startswith(prefix) else None


def probe_docker(timeout_s: float = 3.0) -> tuple[bool, str]:
    """Check that the Docker engine answers (``DOCKER_HOST`` or the default socket).

    Returns:
        ``(True, "Docker engine reachable")`` or ``(False, "Docker engine not reachable: …")``.
        Never raises.
    """
    try:
        import docker
    except ImportError as exc:
        return False, f"{DOCKER_UNREACHABLE}: docker SDK not installed ({_one_line(exc)})"
    socket_path = _unix_socket_path(os.environ.get("DOCKER_HOST") or _DEFAULT_DOCKER_HOST)
    if socket_path is not None:
        # The SDK leaks its socket when connect() fails (a ResourceWarning at every probe on a
        # machine without Docker), so the common "no engine" case is answered here first.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout_s)
                sock.connect(socket_path)
        except OSError as exc:
            return False, f"{DOCKER_UNREACHABLE}: cannot connect to {socket_path} ({exc})"
    client = None
    try:
        client = docker.from_env(timeout=timeout_s)
        if not client.ping():
            return False, f"{DOCKER_UNREACHABLE}: ping was not answered with OK"
        return True, "Docker engine reachable"
    except Exception as exc:
        return False, f"{DOCKER_UNREACHABLE}: {_one_line(exc)}"
    finally:
        if client is not None:
            # Closing the HTTP pool cannot change the answer.
            with contextlib.suppress(Exception):
                client.close()


def _existing(path: Path) -> Path:
    # The home may not exist yet on the first `up --check`; measure the disk it will live on.
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def profile(home: Path, *, check_docker: bool = True, nvml: Any = None) -> HardwareProfile:
    """Measure this machine.

    Args:
        home: the node home; free disk is measured on its file system.
        check_docker: ``False`` skips the engine check (and so lists no executor), for nodes that
            never run work such as bootstrap nodes.
        nvml: passed to :func:`probe_gpus`.

    Never raises for a missing GPU library or Docker engine; those show up as empty ``gpus`` /
    ``executors`` with the reason in ``gpu_note`` / ``executor_problems``.
    """
    logical = psutil.cpu_count(logical=True) or 1
    # psutil answers None where the OS does not say (some containers, some BSDs).
    physical = psutil.cpu_count(logical=False) or logical
    vm = psutil.virtual_memory()
    disk = psutil.disk_usage(str(_existing(home)))
    try:
        load_1m = float(psutil.getloadavg()[0])
    except (OSError, AttributeError):
        load_1m = 0.0
    gpus, gpu_note = probe_gpus(nvml=nvml)
    executors: list[str] = []
    problems: list[str] = []
    if check_docker:
        ok, note = probe_docker()
        if ok:
            executors.append("docker")
        else:
            problems.append(note)
    else:
        problems.append("Docker engine not checked: check_docker=False")
    return HardwareProfile(
        cpus_logical=int(logical),
        cpus_physical=int(physical),
        ram_mb=int(vm.total) // _MIB,
        ram_available_mb=int(vm.available) // _MIB,
        disk_free_mb=int(disk.free) // _MIB,
        load_1m=load_1m,
        gpus=tuple(gpus),
        executors=tuple(executors),
        executor_problems=tuple(problems),
        os=platform.system(),
        arch=platform.machine(),
        python=platform.python_version(),
        gpu_note=gpu_note,
    )


def _parenthesise(problem: str) -> str:
    # "Docker engine not reachable: detail" reads better inside a sentence as "… (detail)".
    what, sep, why = problem.partition(": ")
    return f"{what} ({why})" if sep else problem


def readiness(p: HardwareProfile, *, work_enabled: bool) -> list[str]:
    """What this node lacks to do work, one human-readable line each; empty means ready.

    A node with work disabled (e.g. a bootstrap node) only routes and stores, so it is always ready.
    Having no GPU is not a problem: CPU jobs are most of the work.
    """
    if not work_enabled:
        return []
    missing: list[str] = []
    if not p.executors:
        detail = "; ".join(_parenthesise(x) for x in p.executor_problems) or "none found"
        missing.append(f"no executor: {detail}; install docker.io and start dockerd")
    if p.disk_free_mb < MIN_DISK_FREE_MB:
        missing.append(
            f"low disk: {p.disk_free_mb} MiB free for the node home, want at least "
            f"{MIN_DISK_FREE_MB} MiB for job inputs and outputs"
        )
    return missing


def profile_to_dict(p: HardwareProfile) -> dict[str, Any]:
    """A JSON-able dict of the profile (tuples become lists)."""
    return {
        "cpus_logical": p.cpus_logical,
        "cpus_physical": p.cpus_physical,
        "ram_mb": p.ram_mb,
        "ram_available_mb": p.ram_available_mb,
        "disk_free_mb": p.disk_free_mb,
        "load_1m": p.load_1m,
        "gpus": [
            {
                "index": g.index,
                "name": g.name,
                "memory_mb": g.memory_mb,
                "driver": g.driver,
                "compute_capability": g.compute_capability,
                "uuid": g.uuid,
            }
            for g in p.gpus
        ],
        "gpu_note": p.gpu_note,
        "executors": list(p.executors),
        "executor_problems": list(p.executor_problems),
        "os": p.os,
        "arch": p.arch,
        "python": p.python,
    }
