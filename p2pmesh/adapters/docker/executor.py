"""Run one job in a locked-down Docker container; blocking, meant for a worker thread (R10).

Theory of operation
-------------------
``DockerExecutor.run`` creates the container, attaches to its output, starts it, then polls its
state every ``POLL_S`` until it exits, killing it (SIGKILL) first when the deadline passes,
``should_stop()`` says so, or the /out watchdog trips. Whatever happens, the container is removed
before ``run`` returns or raises. A job's own failure (non-zero exit, OOM, timeout, bad command)
is *data*, returned as a ``ContainerOutcome``; only engine trouble raises ``ExecutorError``.

Sandbox, all of it unconditional: no network (``network_mode="none"``) unless the spec asks;
read-only root filesystem; ``/in`` bind-mounted read-only; ``/tmp`` and ``/dev/shm`` are
size-capped tmpfs; every capability dropped; ``no-new-privileges``; runs as 65534:65534;
CPU (nano_cpus), memory (= memory+swap, so no swap), pids and open-file limits; no core dumps;
GPUs only through a device request when ``gpus > 0``; logging driver ``none`` (output is read
through the attach stream, so nothing accumulates on the engine's disk).

Peak memory and CPU time are sampled at every poll (so they may miss the last ~0.1 s): from the
container's cgroup files when they are visible here, else from the engine's one-shot stats
call, which works wherever the Docker socket does (``figures=`` picks one). ``oom`` comes from
the engine's OOMKilled flag, with one fallback for an engine race described in ``_classify``.

The /out cap and what /out may hold
-----------------------------------
One rule, the same on both paths below and on every worker: after the job, the apparent sizes of
its regular files (a sparse file counts in full) must sum to at most ``out_max_bytes``, else the
status is ``out_too_large``; the tree must hold at most ``OUT_MAX_FILES`` entries and nothing but
regular files and folders (no link of either kind, FIFO, socket, device, or name that is not
UTF-8), else the status is ``out_refused`` and ``error`` names the reason (the first refused
entry in byte order of its path, and its type). A refused or too large /out leaves ``out_dir``
empty. While the job runs, the same sum is checked every ``POLL_S`` and the job is killed once it
passes the cap (or ``OUT_MAX_ENTRIES`` entries). Two ways to hold /out, picked once per executor
(``out_cap="auto"`` tries the first, falls back to the second):

* ``tmpfs`` (mount rights): a tmpfs of ``out_max_bytes + OUT_SLACK_BYTES`` bytes and
  ``OUT_MAX_ENTRIES`` inodes is mounted on ``<out_dir's parent>/.p2pmesh-out-<name>`` and bound as
  /out. **Hard guarantee**: the kernel refuses writes past that size (ENOSPC), nothing touches
  the disk, and nothing in ``out_dir`` is written by the job. The slack is a page per accepted
  file, so no tree the rule accepts runs out of room here when it would not on the other path.
  As soon as the container runs, the host mount is lazily detached (the container's bind mount
  and our directory descriptor keep the tmpfs alive), so no mount outlives both the container
  and this process, even after a crash. After the container is removed (no job process can race
  us), the tree is judged and, if accepted, copied into ``out_dir``. Pages written to /out (and
  /tmp) are charged to the container's memory limit, so a job with ``memory_bytes`` below its
  output size may end ``oom`` here where the other path lets it finish.
* ``watchdog`` (no mount rights, e.g. a daemon in a container that shares the Docker socket):
  ``out_dir`` itself is bound as /out and made writable by everyone for the run (its mode is
  restored afterwards; nothing else changes), then judged in place. **Soft guarantee**: the
  overshoot is bounded by what the job can write in one poll interval plus one scan; keep job
  homes on a filesystem where that is acceptable. Files are left owned by 65534.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
import requests
from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from p2pmesh.errors import ExecutorError

from ._monitor import Figures, LogPump, open_figures
from ._outdir import OUT_MAX_ENTRIES as OUT_MAX_ENTRIES
from ._outdir import OUT_MAX_FILES as OUT_MAX_FILES
from ._outdir import OUT_SLACK_BYTES as OUT_SLACK_BYTES
from ._outdir import OutGuard, TmpfsOut, WatchdogOut

__all__ = [
    "JOB_LABEL",
    "ContainerOutcome",
    "ContainerSpec",
    "DockerExecutor",
]

MiB = 1 << 20
JOB_LABEL = "p2pmesh.job"
# State poll and watchdog period: a timeout or cancel lands within ~0.1 s, at 10 API calls/s.
POLL_S = 0.1
# SIGKILL exit status; see _classify for why it is read as an OOM kill when no flag is set.
SIGKILL_EXIT = 137
# A peak this close to the limit, with a SIGKILL we did not send, is the memory limit at work.
OOM_PEAK_FRACTION = 0.9
# Enough descriptors for numpy/BLAS thread pools, few enough to stop descriptor exhaustion games.
NOFILE = 4096
# Docker refuses memory limits below 6 MiB.
MIN_MEMORY_BYTES = 6 * MiB
# How long to let the attach stream deliver the last output after the container exited.
LOG_DRAIN_S = 5.0
# How long a SIGKILLed container may take to be reported dead before we give up on the engine.
KILL_GRACE_S = 15.0
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
_USER_RE = re.compile(r"(\d+)(?::(\d+))?")

OutCap = Literal["auto", "tmpfs", "watchdog"]
FiguresSource = Literal["auto", "cgroup", "engine"]


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Everything the executor needs to run one job; validated at construction.

    ``name`` is the container name (and the default ``p2pmesh.job`` label); sizes are bytes,
    ``cpus`` may be fractional, ``timeout_s`` counts from the container's start.
    """

    name: str
    image: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    cpus: float
    memory_bytes: int
    pids_limit: int
    gpus: int
    network: bool
    timeout_s: float
    out_max_bytes: int
    log_max_bytes: int
    labels: Mapping[str, str]
    tmp_max_bytes: int = 64 * MiB
    user: str = "65534:65534"

    def __post_init__(self) -> None:
        problems = []
        if not _NAME_RE.fullmatch(self.name):
            problems.append(f"name {self.name!r} is not a valid container name")
        if not self.image:
            problems.append("image is empty")
        if not self.cpus > 0:
            problems.append("cpus must be > 0")
        if self.memory_bytes < MIN_MEMORY_BYTES:
            problems.append(f"memory_bytes must be >= {MIN_MEMORY_BYTES}")
        if self.pids_limit < 1:
            problems.append("pids_limit must be >= 1")
        if self.gpus < 0:
            problems.append("gpus must be >= 0")
        if not self.timeout_s > 0:
            problems.append("timeout_s must be > 0")
        if self.out_max_bytes < 0 or self.log_max_bytes < 0 or self.tmp_max_bytes <= 0:
            problems.append("out/log max bytes must be >= 0 and tmp_max_bytes > 0")
        if not _USER_RE.fullmatch(self.user):
            problems.append(f"user {self.user!r} must be numeric uid[:gid]")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def uid_gid(self) -> tuple[int, int]:
        m = _USER_RE.fullmatch(self.user)
        assert m is not None  # checked in __post_init__
        return int(m[1]), int(m[2] or m[1])


@dataclass(frozen=True, slots=True)
class ContainerOutcome:
    """What happened to one container.

    ``status`` is one of ``exited`` (ran to completion, any exit code), ``timeout``, ``oom``,
    ``killed`` (cancelled through ``should_stop``), ``out_too_large``, ``out_refused`` (/out
    holds something that is not a plain file or folder, or too many entries; ``error`` says
    which, in words that are the same on every worker) or ``error`` (the engine refused to
    start the job, e.g. its command does not exist in the image; see ``error``).
    ``log_bytes`` is what was written to the log file (at most ``log_max_bytes``).
    """

    status: str
    exit_code: int | None
    run_s: float
    max_memory_bytes: int | None
    cpu_s: float | None
    log_bytes: int
    log_truncated: bool
    error: str


class DockerExecutor:
    """Runs ``ContainerSpec`` jobs on the local Docker engine; safe to call from many threads."""

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        out_cap: OutCap = "auto",
        figures: FiguresSource = "auto",
    ) -> None:
        """Args:
        client: an engine client; by default one from the environment (``DOCKER_HOST``...).
        out_cap: how /out is capped (module docstring); ``auto`` uses tmpfs when running as
            root and the mount works, else the watchdog.
        figures: where CPU time and peak memory come from; ``auto`` reads the container's
            cgroup files when they are visible here, else asks the engine.

        Raises:
            ExecutorError: the engine cannot be reached.
        """
        if client is None:
            with _engine_errors("connect to the Docker engine"):
                client = docker.from_env()
        self._client = client
        self._out_cap = out_cap
        self._figures = figures

    @staticmethod
    def probe() -> tuple[bool, str]:
        """Tell whether a Docker engine answers a ping within 3 s, with a one-line reason."""
        try:
            client = docker.from_env(timeout=3)
            try:
                client.ping()
                version = client.version().get("Version", "?")
            finally:
                client.close()
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            return False, f"Docker engine not reachable: {exc}"
        return True, f"Docker engine {version}"

    def image_present(self, image: str) -> bool:
        """Tell whether ``image`` is in the local engine (never pulls)."""
        try:
            self._client.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ExecutorError(f"cannot inspect image {image}: {exc}") from exc
        return True

    def local_images(self) -> frozenset[str]:
        """Every reference the engine holds: ``name:tag`` and ``name@sha256:…`` (bid check)."""
        with _engine_errors("list images"):
            images = self._client.images.list()
        refs: set[str] = set()
        for image in images:
            if image.id:
                refs.add(image.id)  # a job that names its image ID matches by it (§7.14)
            refs.update(image.tags)
            refs.update(image.attrs.get("RepoDigests") or ())
        return frozenset(refs)

    def kill(self, name: str) -> bool:
        """SIGKILL a running container by name; False if it is not there or not running."""
        try:
            self._client.api.kill(name)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # exists but is not running
                return False
            raise ExecutorError(f"cannot kill {name}: {exc}") from exc
        except requests.RequestException as exc:
            raise ExecutorError(f"cannot kill {name}: {exc}") from exc
        return True

    def remove_stale(self, label: str = JOB_LABEL) -> int:
        """Force-remove every container carrying ``label`` (``key`` or ``key=value``).

        Meant for daemon start-up, after a crash. Several nodes may share one engine, so pass
        a label that only this node's containers carry. Also detaches the /out tmpfs of each
        removed container if a crash left it mounted.

        Returns:
            How many containers were removed.
        """
        with _engine_errors("list stale containers"):
            stale = self._client.containers.list(all=True, filters={"label": label})
        removed = 0
        for container in stale:
            with contextlib.suppress(docker.errors.NotFound):
                with _engine_errors(f"remove stale container {container.name}"):
                    container.remove(force=True)
                removed += 1
            TmpfsOut.release_leftovers(container.name)
        return removed

    def run(
        self,
        spec: ContainerSpec,
        in_dir: Path,
        out_dir: Path,
        log_path: Path,
        should_stop: Callable[[], bool] | None = None,
    ) -> ContainerOutcome:
        """Run one job to completion (or until it is stopped) and remove its container.

        Args:
            spec: what to run and within which limits.
            in_dir: existing folder mounted read-only as /in.
            out_dir: empty (or absent) folder that receives /out's files.
            log_path: file receiving stdout and stderr, interleaved, up to ``log_max_bytes``.
            should_stop: polled every ``POLL_S``; True kills the job (status ``killed``).

        Returns:
            The outcome; a job's failure is reported there, not raised.

        Raises:
            ExecutorError: the image is missing, the engine failed, or the folders are unusable.
        """
        try:
            in_dir = _existing_dir(in_dir, "in_dir")
            out_dir = _empty_dir(out_dir)
            log_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExecutorError(f"cannot prepare the job folders: {exc}") from exc
        if not self.image_present(spec.image):
            raise ExecutorError(
                f"image {spec.image} is not present on this node",
                hint="build local images with: python -m p2pmesh.bootstrap.images",
            )
        out = self._open_out(spec, out_dir)
        try:
            result = self._run_container(spec, in_dir, out, log_path, should_stop)
            try:
                verdict = out.finish()
            except OSError as exc:
                raise ExecutorError(f"cannot collect /out of {spec.name}: {exc}") from exc
        finally:
            out.close()
        # A job that ran to its end (or was stopped for its /out) is judged by its /out; an
        # OOM kill counts as too large output when /out is, since tmpfs pages are memory.
        judged = (
            ("exited", "oom") if verdict.status == "out_too_large" else ("exited", "out_too_large")
        )
        if verdict.status and result.status in judged:
            result.status, result.error = verdict.status, verdict.error
        return result.freeze()

    # -- internals -------------------------------------------------------------------------

    def _open_out(self, spec: ContainerSpec, out_dir: Path) -> OutGuard:
        uid, gid = spec.uid_gid
        if self._out_cap in ("auto", "tmpfs") and os.geteuid() == 0:
            try:
                return TmpfsOut(out_dir, spec.name, spec.out_max_bytes, uid, gid)
            except OSError as exc:
                if self._out_cap == "tmpfs":
                    raise ExecutorError(f"cannot mount the /out tmpfs: {exc}") from exc
                self._out_cap = "watchdog"  # no mount privilege here; do not retry every job
        elif self._out_cap == "tmpfs":
            raise ExecutorError("out_cap='tmpfs' needs the executor to run as root")
        return WatchdogOut(out_dir, spec.out_max_bytes)

    def _run_container(
        self,
        spec: ContainerSpec,
        in_dir: Path,
        out: OutGuard,
        log_path: Path,
        should_stop: Callable[[], bool] | None,
    ) -> _Result:
        with _engine_errors(f"create container {spec.name}"):
            try:
                container = self._client.containers.create(**_create_args(spec, in_dir, out.source))
            except docker.errors.ImageNotFound as exc:
                raise ExecutorError(f"image {spec.image} is not present on this node") from exc
        pump: LogPump | None = None
        try:
            with _engine_errors(f"attach to {spec.name}"):
                try:
                    pump = LogPump(container, log_path, spec.log_max_bytes)
                except OSError as exc:
                    raise ExecutorError(f"cannot write the log {log_path}: {exc}") from exc
            result = self._supervise(container.id, spec, out, should_stop)
            pump.drain(LOG_DRAIN_S)
        finally:
            # Removal also ends the attach stream, so the pump cannot outlive the job.
            _remove(self._client, container.id)
            if pump is not None:
                pump.close()
        result.log_bytes, result.log_truncated = pump.written, pump.truncated
        return result

    def _supervise(
        self,
        cid: str,
        spec: ContainerSpec,
        out: OutGuard,
        should_stop: Callable[[], bool] | None,
    ) -> _Result:
        api = self._client.api
        started = time.monotonic()
        try:
            api.start(cid)
        except docker.errors.APIError as exc:
            if exc.is_client_error():  # 4xx: the job's fault, e.g. command not in the image
                return _Result("error", None, 0.0, error=_explanation(exc))
            raise ExecutorError(f"cannot start {spec.name}: {exc}") from exc
        except requests.RequestException as exc:
            raise ExecutorError(f"cannot start {spec.name}: {exc}") from exc
        out.started()
        deadline = started + spec.timeout_s
        reason = ""
        killed_at = 0.0
        figures: Figures | None = None
        while True:
            with _engine_errors(f"inspect {spec.name}"):
                state = api.inspect_container(cid)["State"]
            now = time.monotonic()
            if not state.get("Running"):
                break
            if figures is None:
                figures = open_figures(self._figures, int(state.get("Pid") or 0), cid, api)
            else:
                figures.sample()
            if not reason:
                if now >= deadline:
                    reason = "timeout"
                elif should_stop is not None and should_stop():
                    reason = "killed"
                elif out.over_cap():
                    reason = "out_too_large"
            if reason and (not killed_at or now - killed_at > 1.0):
                if killed_at and now - killed_at > KILL_GRACE_S:
                    raise ExecutorError(f"container {spec.name} does not die after SIGKILL")
                self.kill(cid)
                killed_at = killed_at or now
            time.sleep(POLL_S if reason else max(0.005, min(POLL_S, deadline - now)))
        if not reason and not state.get("OOMKilled") and state.get("ExitCode") == SIGKILL_EXIT:
            state = self._settle(cid, state)
        peak = figures.max_memory if figures else None
        status = reason or _classify(state, peak, spec.memory_bytes)
        return _Result(
            status,
            state.get("ExitCode"),
            now - started,
            max_memory_bytes=peak,
            cpu_s=figures.cpu_s if figures else None,
            error=_status_error(status, spec, state),
        )

    def _settle(self, cid: str, state: dict[str, Any]) -> dict[str, Any]:
        # The engine records an OOM kill a few ms after the exit at worst; give it that long.
        for _ in range(5):
            time.sleep(0.02)
            with _engine_errors("inspect a stopped container"):
                state = self._client.api.inspect_container(cid)["State"]
            if state.get("OOMKilled"):
                break
        return state


def _classify(state: Mapping[str, Any], peak: int | None, limit: int) -> str:
    """Status of a container that exited without being killed by us.

    Docker 20.10 + containerd register the cgroup OOM watcher only after the job's process has
    started, so a job that exhausts its memory within milliseconds dies with no OOMKilled flag
    and no "oom" event (seen in ~1 of 20 fast memory bombs). Nobody but the kernel sends a
    SIGKILL to a capability-less container we did not kill, so a SIGKILL exit counts as an OOM
    kill when the flag is missing and either memory was never sampled (it died before the
    first poll) or its peak came close to the limit. A job that SIGKILLs itself slowly and
    small still reads as "exited" with code 137.
    """
    if state.get("OOMKilled"):
        return "oom"
    if state.get("ExitCode") == SIGKILL_EXIT and (
        peak is None or peak >= OOM_PEAK_FRACTION * limit
    ):
        return "oom"
    return "exited"


# -- small helpers -------------------------------------------------------------------------


@dataclass(slots=True)
class _Result:
    status: str
    exit_code: int | None
    run_s: float
    max_memory_bytes: int | None = None
    cpu_s: float | None = None
    log_bytes: int = 0
    log_truncated: bool = False
    error: str = ""

    def freeze(self) -> ContainerOutcome:
        return ContainerOutcome(
            self.status,
            self.exit_code,
            self.run_s,
            self.max_memory_bytes,
            self.cpu_s,
            self.log_bytes,
            self.log_truncated,
            self.error,
        )


def _create_args(spec: ContainerSpec, in_dir: Path, out_source: Path) -> dict[str, Any]:
    labels = {**spec.labels, JOB_LABEL: spec.labels.get(JOB_LABEL, spec.name)}
    return {
        "image": spec.image,
        "command": list(spec.command) or None,
        "name": spec.name,
        "environment": dict(spec.env),
        "user": spec.user,
        "labels": labels,
        "detach": True,
        "network_mode": "bridge" if spec.network else "none",
        "read_only": True,
        "mounts": [
            Mount("/in", str(in_dir), type="bind", read_only=True),
            Mount("/out", str(out_source), type="bind", read_only=False),
        ],
        "tmpfs": {"/tmp": f"size={spec.tmp_max_bytes},mode=1777"},
        "shm_size": spec.tmp_max_bytes,
        "ipc_mode": "private",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "nano_cpus": int(spec.cpus * 1e9),
        "mem_limit": spec.memory_bytes,
        "memswap_limit": spec.memory_bytes,
        "pids_limit": spec.pids_limit,
        "ulimits": [
            Ulimit(name="nofile", soft=NOFILE, hard=NOFILE),
            Ulimit(name="core", soft=0, hard=0),
        ],
        "device_requests": (
            [DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])] if spec.gpus > 0 else None
        ),
        "log_config": LogConfig(type=LogConfig.types.NONE),
    }


def _remove(client: docker.DockerClient, cid: str) -> None:
    for attempt in range(3):
        try:
            client.api.remove_container(cid, force=True)
            return
        except docker.errors.NotFound:
            return
        except (docker.errors.APIError, requests.RequestException) as exc:
            # 409 "removal already in progress" and transient engine hiccups: retry briefly.
            if attempt == 2:
                raise ExecutorError(f"cannot remove container {cid[:12]}: {exc}") from exc
            time.sleep(0.5)


def _status_error(status: str, spec: ContainerSpec, state: Mapping[str, Any]) -> str:
    if status == "timeout":
        return f"timed out after {spec.timeout_s:g} s"
    if status == "killed":
        return "cancelled"
    if status == "oom":
        return f"memory limit of {spec.memory_bytes} bytes exceeded"
    if status == "out_too_large":
        return f"/out exceeded {spec.out_max_bytes} bytes"  # the same words as _outdir's
    return str(state.get("Error") or "")


def _explanation(exc: docker.errors.APIError) -> str:
    text = str(exc.explanation or exc)
    # The runtime's message ends with the useful part, e.g. 'exec: "x": executable file not found'.
    return text.rsplit("unable to start container process: ", 1)[-1]


def _existing_dir(path: Path, what: str) -> Path:
    path = path.resolve()
    if not path.is_dir():
        raise ExecutorError(f"{what} {path} is not a directory")
    return path


def _empty_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path = _existing_dir(path, "out_dir")
    with os.scandir(path) as it:
        if next(it, None) is not None:
            raise ExecutorError(f"out_dir {path} is not empty")
    return path


@contextlib.contextmanager
def _engine_errors(doing: str) -> Iterator[None]:
    """Map the SDK's (and requests') exceptions to ExecutorError at this boundary (R6)."""
    try:
        yield
    except ExecutorError:
        raise
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise ExecutorError(f"cannot {doing}: {exc}") from exc
