"""The two ways of capping /out; the guarantees are stated in ``executor``'s docstring."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from p2pmesh import packing
from p2pmesh.errors import ExecutorError

MiB = 1 << 20
# The most entries an accepted /out may hold: packing's limit, so a tree the judge accepts
# always packs.
OUT_MAX_FILES = packing.DEFAULT_MAX_FILES
# Where scans stop counting (and the watchdog kills, and the tmpfs runs out of inodes): far
# enough above OUT_MAX_FILES that the judge sees "too many entries", low enough to bound a scan.
OUT_MAX_ENTRIES = 100_000
# The tmpfs holds pages, the cap counts apparent bytes: every accepted file may waste up to a
# page, so the kernel's limit leaves room for that on the most files an accepted tree holds.
# Without it a tree within the cap could hit ENOSPC on tmpfs and pass on the watchdog path.
OUT_SLACK_BYTES = OUT_MAX_FILES * os.sysconf("SC_PAGE_SIZE") + 1 * MiB
# Longest entry path quoted in a refusal, so the signed error text stays within its bound.
_SHOWN_PATH_CHARS = 100


@dataclass(frozen=True, slots=True)
class OutVerdict:
    """What the job's /out amounts to once the job is over; ``status`` empty means accepted.

    The same tree gives the same verdict on both paths and on every honest worker (the rules
    read only names, types and apparent sizes, never a filesystem's block accounting or listing
    order), so replicas that refuse a job's outputs agree, word for word.
    """

    status: str  # "", "out_too_large" or "out_refused"
    error: str

    @property
    def accepted(self) -> bool:
        return not self.status


ACCEPTED = OutVerdict("", "")


class OutGuard(Protocol):
    source: Path  # host path bound as /out

    def started(self) -> None: ...  # the container is running: its mounts are in place
    def over_cap(self) -> bool: ...  # polled while the job runs; True kills the job
    def finish(self) -> OutVerdict: ...  # after the container is gone; keeps only accepted trees
    def close(self) -> None: ...


_libc = ctypes.CDLL(None, use_errno=True)
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MNT_DETACH = 2
_STAGING_PREFIX = ".p2pmesh-out-"


class TmpfsOut:
    """Hard cap: a size-limited tmpfs, copied into out_dir after the job (see executor.py).

    Once the container has started, its own bind mount holds the tmpfs, so the host mount is
    lazily detached and only a directory descriptor is kept to read the files back. The tmpfs
    then disappears by itself when both the container and this process are gone: a daemon
    killed mid-job leaks no mount (``remove_stale`` removes the container).
    """

    def __init__(self, out_dir: Path, name: str, cap: int, uid: int, gid: int) -> None:
        self._out_dir, self._cap = out_dir, cap
        # Named after the container, so remove_stale can find it if we die before the detach.
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
        try:
            self._fd = os.open(self.source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self._release(self.source)
            raise
        # Paths through the descriptor keep working after the mount point is detached.
        self._root = Path(f"/proc/self/fd/{self._fd}")
        self._tripped = False

    def started(self) -> None:
        self._release(self.source)

    def over_cap(self) -> bool:
        # The kernel stops writes only at cap + slack; the job is stopped at the cap itself,
        # exactly when the watchdog path would stop it.
        self._tripped = self._tripped or _over(self._root, self._cap) or self._full()
        return self._tripped

    def finish(self) -> OutVerdict:
        verdict = judge(self._root, self._cap)
        if verdict.accepted and (self._tripped or self._full()):
            # Stopped at the cap, or out of pages or inodes with an acceptable tree left: writes
            # were refused, so the job did not get to write what it meant to.
            verdict = _too_large(self._cap)
        if verdict.accepted:
            copy_tree(self._root, self._out_dir)
        return verdict

    def close(self) -> None:
        try:
            self._release(self.source)
        finally:
            os.close(self._fd)  # the last reference: the kernel frees the tmpfs

    def _full(self) -> bool:
        fs = os.fstatvfs(self._fd)
        return fs.f_bavail == 0 or fs.f_favail == 0

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
        """Detach the staging tmpfs of container ``name`` if a crash left it mounted."""
        suffix = f"/{_STAGING_PREFIX}{name}"
        with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="utf-8") as mounts:
            # /proc/mounts escapes blanks in paths as octal (\040).
            points = [line.split()[1].replace("\\040", " ") for line in mounts]
        for point in points:
            if point.endswith(suffix):
                with contextlib.suppress(ExecutorError):
                    cls._release(Path(point))


class WatchdogOut:
    """Soft cap: out_dir bound directly, scanned every poll (see executor.py)."""

    def __init__(self, out_dir: Path, cap: int) -> None:
        self.source, self._cap = out_dir, cap
        self._mode = stat.S_IMODE(out_dir.stat().st_mode)
        self._tripped = False
        # The job's user is not us; only this one folder becomes writable for it.
        os.chmod(out_dir, 0o777)

    def started(self) -> None:
        pass

    def over_cap(self) -> bool:
        self._tripped = self._tripped or _over(self.source, self._cap)
        return self._tripped

    def finish(self) -> OutVerdict:
        verdict = judge(self.source, self._cap)
        if verdict.accepted and self._tripped:
            verdict = _too_large(self._cap)  # stopped at the cap: not what the job meant to write
        if not verdict.accepted:
            clear(self.source)  # nothing of a refused /out is kept, as on the tmpfs path
        return verdict

    def close(self) -> None:
        os.chmod(self.source, self._mode)


def _over(root: Path, cap: int) -> bool:
    size, entries, _ = scan(root, cap)
    return size > cap or entries > OUT_MAX_ENTRIES


def judge(root: Path, cap: int) -> OutVerdict:
    """The verdict on a finished job's /out; a pure function of the tree (see OutVerdict).

    In this order: apparent file sizes summing past ``cap``; more than ``OUT_MAX_FILES``
    entries; then the first entry, in byte order of its path, that is not a regular file or a
    folder (a link of either kind, a FIFO, a socket, a device, a name that is not UTF-8).
    """
    size, entries, refused = scan(root, cap, full=True)
    if size > cap:
        return _too_large(cap)
    if entries > OUT_MAX_FILES:
        return OutVerdict("out_refused", f"/out holds more than {OUT_MAX_FILES} entries")
    if refused is not None:
        path, kind = refused
        shown = path.decode("utf-8", "backslashreplace")
        if len(shown) > _SHOWN_PATH_CHARS:
            shown = shown[: _SHOWN_PATH_CHARS - 1] + "…"
        return OutVerdict(
            "out_refused", f"/out/{shown}: {kind} not allowed (outputs are plain files and folders)"
        )
    return ACCEPTED


def _too_large(cap: int) -> OutVerdict:
    return OutVerdict("out_too_large", f"/out exceeded {cap} bytes")


def scan(root: Path, cap: int, *, full: bool = False) -> tuple[int, int, tuple[bytes, str] | None]:
    """Apparent bytes of regular files, entry count, and the first refused entry under root.

    Stops early past ``OUT_MAX_ENTRIES`` entries, and (unless ``full``) once past ``cap``, so a
    hostile tree costs a bounded number of stats. The refused entry is the smallest path in
    byte order, so the answer does not depend on the filesystem's listing order.
    """
    size = entries = 0
    refused: tuple[bytes, str] | None = None
    pending = [b""]
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(os.fsencode(root) + (b"/" + rel_dir if rel_dir else b"")) as it:
                children = list(it)
        except OSError:
            continue  # vanished mid-run: the next poll sees the new state
        for child in children:
            entries += 1
            rel = rel_dir + b"/" + child.name if rel_dir else child.name
            try:
                st = child.stat(follow_symlinks=False)
            except OSError:
                continue
            kind = entry_kind(child.name, st)
            if stat.S_ISDIR(st.st_mode) and not kind:
                pending.append(rel)
            elif stat.S_ISREG(st.st_mode):
                size += st.st_size
            if kind and (refused is None or rel < refused[0]):
                refused = (rel, kind)
            if entries > OUT_MAX_ENTRIES or (size > cap and not full):
                return size, entries, refused
    return size, entries, refused


def entry_kind(name: bytes, st: os.stat_result) -> str:
    """Why an entry may not be an output ("" when it may): the rules of ``packing``."""
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return "name that is not valid UTF-8"
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return ""
    if stat.S_ISREG(mode):
        return "hard link" if st.st_nlink > 1 else ""
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def clear(root: Path) -> None:
    """Remove everything below root, never following links."""
    with os.scandir(root) as it:
        for child in list(it):
            if child.is_dir(follow_symlinks=False):
                shutil.rmtree(child.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(child.path)


def copy_tree(src: Path, dest: Path) -> None:
    """Copy an accepted tree (regular files and folders only); modes 0o755/0o644."""
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
            # Nothing else is here: judge() refused the tree otherwise.
