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

The /out size cap
-----------------
Two modes, picked once per executor (``out_cap="auto"`` tries the first, falls back to the
second):

* ``tmpfs`` (the executor runs as root): a tmpfs of ``out_max_bytes + OUT_SLACK_BYTES`` bytes and
  ``OUT_MAX_ENTRIES`` inodes is mounted on ``<out_dir's parent>/.p2pmesh-out-<name>`` and bound as
  /out. **Hard guarantee**: the kernel refuses writes past that size (ENOSPC), nothing touches
  the disk, and nothing in ``out_dir`` is written by the job. After the container is removed (so
  no job process can race us), the files are measured; if their sizes sum to more than
  ``out_max_bytes``, or the tmpfs filled up, the status is ``out_too_large`` and nothing is
  copied; otherwise regular files and directories (never links or special files) are copied
  into ``out_dir`` and the tmpfs is unmounted. The slack absorbs tmpfs page rounding of small
  files. Pages written to /out (and /tmp) are charged to the container's memory limit, so a job
  with ``memory_bytes`` below its output size may end ``oom`` first.
* ``watchdog`` (no mount privilege): ``out_dir`` itself is bound as /out and made writable by
  everyone for the run (its mode is restored afterwards; nothing else changes). A scan every
  ``POLL_S`` kills the container once file sizes exceed ``out_max_bytes`` or entries exceed
  ``OUT_MAX_ENTRIES``, and the contents are deleted. **Soft guarantee**: the overshoot is bounded
  by what the job can write in one poll interval plus one scan; keep job homes on a filesystem
  where that is acceptable. Files are left owned by 65534.

Either way a sparse file counts at its apparent size, and the status is ``out_too_large``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import docker
import docker.errors
import requests
from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from p2pmesh.errors import ExecutorError

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
# docker stats is comparatively slow (tens of ms); peak memory and CPU time need no finer grain.
STATS_EVERY_S = 0.5
# Enough descriptors for numpy/BLAS thread pools, few enough to stop descriptor exhaustion games.
NOFILE = 4096
# See module docstring: covers page rounding of a few hundred small files.
OUT_SLACK_BYTES = 1 * MiB
# Far above packing's default of 10,000 entries (so packing gives the precise error) while
# bounding the watchdog's scan time and the tmpfs inode table.
OUT_MAX_ENTRIES = 100_000
# Docker refuses memory limits below 6 MiB.
MIN_MEMORY_BYTES = 6 * MiB
# How long to let the attach stream deliver the last output after the container exited.
LOG_DRAIN_S = 5.0
# How long a SIGKILLed container may take to be reported dead before we give up on the engine.
KILL_GRACE_S = 15.0
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
_USER_RE = re.compile(r"(\d+)(?::(\d+))?")

OutCap = Literal["auto", "tmpfs", "watchdog"]


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
    ``killed`` (cancelled through ``should_stop``), ``out_too_large`` or ``error`` (the engine
    refused to start the job, e.g. its command does not exist in the image; see ``error``).
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
        self, client: docker.DockerClient | None = None, *, out_cap: OutCap = "auto"
    ) -> None:
        """Args:
        client: an engine client; by default one from the environment (``DOCKER_HOST``...).
        out_cap: how /out is capped (module docstring); ``auto`` uses tmpfs when running as
            root and the mount works, else the watchdog.

        Raises:
            ExecutorError: the engine cannot be reached.
        """
        if client is None:
            with _engine_errors("connect to the Docker engine"):
                client = docker.from_env()
        self._client = client
        self._out_cap = out_cap

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
            _TmpfsOut.release_leftovers(container.name)
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
        in_dir = _existing_dir(in_dir, "in_dir")
        out_dir = _empty_dir(out_dir)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.image_present(spec.image):
            raise ExecutorError(
                f"image {spec.image} is not present on this node",
                hint="build local images with: python -m p2pmesh.bootstrap.images",
            )
        out = self._open_out(spec, out_dir)
        try:
            result = self._run_container(spec, in_dir, out, log_path, should_stop)
            try:
                over = out.finish()
            except OSError as exc:
                raise ExecutorError(f"cannot collect /out of {spec.name}: {exc}") from exc
        finally:
            out.close()
        if over and result.status in ("exited", "oom"):
            result.status = "out_too_large"
            result.error = f"/out exceeded {spec.out_max_bytes} bytes"
        return result.freeze()

    # -- internals -------------------------------------------------------------------------

    def _open_out(self, spec: ContainerSpec, out_dir: Path) -> _OutGuard:
        uid, gid = spec.uid_gid
        if self._out_cap in ("auto", "tmpfs") and os.geteuid() == 0:
            try:
                return _TmpfsOut(out_dir, spec.name, spec.out_max_bytes, uid, gid)
            except OSError as exc:
                if self._out_cap == "tmpfs":
                    raise ExecutorError(f"cannot mount the /out tmpfs: {exc}") from exc
                self._out_cap = "watchdog"  # no mount privilege here; do not retry every job
        elif self._out_cap == "tmpfs":
            raise ExecutorError("out_cap='tmpfs' needs the executor to run as root")
        return _WatchdogOut(out_dir, spec.out_max_bytes)

    def _run_container(
        self,
        spec: ContainerSpec,
        in_dir: Path,
        out: _OutGuard,
        log_path: Path,
        should_stop: Callable[[], bool] | None,
    ) -> _Result:
        with _engine_errors(f"create container {spec.name}"):
            try:
                container = self._client.containers.create(**_create_args(spec, in_dir, out.source))
            except docker.errors.ImageNotFound as exc:
                raise ExecutorError(f"image {spec.image} is not present on this node") from exc
        pump: _LogPump | None = None
        try:
            with _engine_errors(f"attach to {spec.name}"):
                pump = _LogPump(container, log_path, spec.log_max_bytes)
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
        out: _OutGuard,
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
        deadline = started + spec.timeout_s
        reason = ""
        killed_at = 0.0
        stats = _Stats()
        next_stats = started
        while True:
            with _engine_errors(f"inspect {spec.name}"):
                state = api.inspect_container(cid)["State"]
            now = time.monotonic()
            if not state.get("Running"):
                break
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
            if now >= next_stats:
                stats.sample(api, cid)
                next_stats = now + STATS_EVERY_S
            time.sleep(max(0.005, min(POLL_S, deadline - now)) if not reason else POLL_S)
        run_s = now - started
        exit_code = state.get("ExitCode")
        if reason:
            status = reason
        elif state.get("OOMKilled"):
            status = "oom"
        else:
            status = "exited"
        return _Result(
            status,
            exit_code,
            run_s,
            max_memory_bytes=stats.max_memory,
            cpu_s=stats.cpu_s,
            error=_status_error(status, spec, state),
        )


# -- the /out guards ---------------------------------------------------------------------------


class _OutGuard(Protocol):
    source: Path  # host path bound as /out

    def over_cap(self) -> bool: ...  # polled while the job runs
    def finish(self) -> bool: ...  # after the container is gone; True if over the cap
    def close(self) -> None: ...


_libc = ctypes.CDLL(None, use_errno=True)
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MNT_DETACH = 2
_STAGING_PREFIX = ".p2pmesh-out-"


class _TmpfsOut:
    """Hard cap: a size-limited tmpfs, copied into out_dir after the job (module docstring)."""

    def __init__(self, out_dir: Path, name: str, cap: int, uid: int, gid: int) -> None:
        self._out_dir, self._cap = out_dir, cap
        # Named after the container so remove_stale can find it after a crash.
        self.source = out_dir.parent / f"{_STAGING_PREFIX}{name}"
        self._release(self.source)
        self.source.mkdir(mode=0o700)
        size = cap + OUT_SLACK_BYTES
        opts = f"size={size},nr_inodes={OUT_MAX_ENTRIES},mode=0700,uid={uid},gid={gid}"
        flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        if _libc.mount(b"tmpfs", os.fsencode(self.source), b"tmpfs", flags, opts.encode()) != 0:
            err = ctypes.get_errno()
            self.source.rmdir()
            raise OSError(err, os.strerror(err), str(self.source))
        self._mounted = True

    def over_cap(self) -> bool:
        return False  # the kernel enforces it

    def finish(self) -> bool:
        fs = os.statvfs(self.source)
        size, _ = _usage(self.source, self._cap, OUT_MAX_ENTRIES)
        over = fs.f_bavail == 0 or fs.f_favail == 0 or size > self._cap
        if not over:
            _copy_tree(self.source, self._out_dir)
        return over

    def close(self) -> None:
        self._release(self.source)

    @staticmethod
    def _release(path: Path) -> None:
        if not path.exists():
            return
        _libc.umount2(os.fsencode(path), _MNT_DETACH)  # EINVAL when not mounted: fine
        try:
            path.rmdir()
        except OSError as exc:
            raise ExecutorError(f"cannot remove the /out staging folder {path}: {exc}") from exc

    @classmethod
    def release_leftovers(cls, name: str) -> None:
        suffix = f"/{_STAGING_PREFIX}{name}"
        with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="utf-8") as mounts:
            points = [line.split()[1] for line in mounts if line.split()[1].endswith(suffix)]
        for point in points:
            with contextlib.suppress(ExecutorError):
                cls._release(Path(point))


class _WatchdogOut:
    """Soft cap: out_dir bound directly, scanned every poll (module docstring)."""

    def __init__(self, out_dir: Path, cap: int) -> None:
        self.source, self._cap = out_dir, cap
        self._mode = stat.S_IMODE(out_dir.stat().st_mode)
        self._tripped = False
        # The job's user is not us; only this one folder becomes writable for it.
        os.chmod(out_dir, 0o777)

    def over_cap(self) -> bool:
        size, entries = _usage(self.source, self._cap, OUT_MAX_ENTRIES)
        self._tripped = self._tripped or size > self._cap or entries > OUT_MAX_ENTRIES
        return self._tripped

    def finish(self) -> bool:
        if self.over_cap():
            with os.scandir(self.source) as it:
                for child in list(it):
                    if child.is_dir(follow_symlinks=False):
                        shutil.rmtree(child.path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            os.unlink(child.path)
        return self._tripped

    def close(self) -> None:
        os.chmod(self.source, self._mode)


def _usage(root: Path, max_size: int, max_entries: int) -> tuple[int, int]:
    """Sum of apparent file sizes (or allocated size, if larger) and entry count under root.

    Stops early once past either limit, so a hostile tree costs at most ``max_entries`` stats.
    """
    size = entries = 0
    pending = [root]
    while pending:
        try:
            with os.scandir(pending.pop()) as it:
                children = list(it)
        except OSError:
            continue  # vanished or unreadable mid-run: the next poll sees the new state
        for child in children:
            entries += 1
            try:
                st = child.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                pending.append(Path(child.path))
                size += st.st_blocks * 512
            else:
                size += max(st.st_size, st.st_blocks * 512) if stat.S_ISREG(st.st_mode) else 0
            if size > max_size or entries > max_entries:
                return size, entries
    return size, entries


def _copy_tree(src: Path, dest: Path) -> None:
    """Copy regular files and directories only, never following links; modes 0o755/0o644."""
    pending = [Path()]
    while pending:
        rel = pending.pop()
        with os.scandir(src / rel) as it:
            children = list(it)
        for child in children:
            st = child.stat(follow_symlinks=False)
            target = dest / rel / child.name
            if stat.S_ISDIR(st.st_mode):
                target.mkdir(mode=0o755)
                pending.append(rel / child.name)
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                src_fd = os.open(child.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(src_fd, "rb") as fin:
                    dst_fd = os.open(
                        target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode
                    )
                    with os.fdopen(dst_fd, "wb") as fout:
                        shutil.copyfileobj(fin, fout, 1 * MiB)
            # Links, FIFOs, sockets and devices are dropped: outputs are plain data.


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


@dataclass(slots=True)
class _Stats:
    max_memory: int | None = None
    cpu_s: float | None = None

    def sample(self, api: docker.APIClient, cid: str) -> None:
        try:
            raw: dict[str, Any] = api.stats(cid, stream=False, one_shot=True)
        except (docker.errors.DockerException, requests.RequestException):
            return  # a missed sample only makes the figures coarser
        mem = raw.get("memory_stats") or {}
        peak = max(mem.get("max_usage", 0), mem.get("usage", 0))
        if peak:
            self.max_memory = max(self.max_memory or 0, peak)
        total_ns = ((raw.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
        if total_ns:
            self.cpu_s = max(self.cpu_s or 0.0, total_ns / 1e9)


@dataclass
class _LogPump:
    """Copies the attach stream into the log file, up to a cap, then keeps draining."""

    container: Any
    path: Path
    cap: int
    written: int = 0
    truncated: bool = False
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        # Attached before start, so not a byte is missed; the engine keeps no log (driver none).
        self._stream = self.container.attach(stdout=True, stderr=True, stream=True, logs=False)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        self._file = os.fdopen(fd, "wb")
        self._thread = threading.Thread(
            target=self._pump, name=f"p2pmesh-log-{self.container.name}", daemon=True
        )
        self._thread.start()

    def _pump(self) -> None:
        try:
            for chunk in self._stream:
                room = self.cap - self.written
                if room > 0:
                    self._file.write(chunk[:room])
                    self.written += min(room, len(chunk))
                if len(chunk) > room:
                    self.truncated = True  # keep reading so the job never blocks on stdout
        except Exception:
            # The stream breaks, with whatever exception the transport picks, when the container
            # is removed under it; everything read so far is already in the file.
            pass
        finally:
            self._file.close()

    def drain(self, timeout: float) -> None:
        self._thread.join(timeout)

    def close(self) -> None:
        self._thread.join(2.0)
        self._stream.close()


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
        return f"/out exceeded {spec.out_max_bytes} bytes"
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
