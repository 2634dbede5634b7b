"""The two ways of capping /out; the guarantees are stated in ``executor``'s docstring."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import stat
from pathlib import Path
from typing import Protocol

from p2pmesh.errors import ExecutorError

MiB = 1 << 20
# Absorbs tmpfs page rounding of a few hundred small files, so a job within the cap is not
# refused for the filesystem's bookkeeping.
OUT_SLACK_BYTES = 1 * MiB
# Far above packing's default of 10,000 entries (so packing gives the precise error) while
# bounding the watchdog's scan time and the tmpfs inode table.
OUT_MAX_ENTRIES = 100_000


class OutGuard(Protocol):
    source: Path  # host path bound as /out

    def started(self) -> None: ...  # the container is running: its mounts are in place
    def over_cap(self) -> bool: ...  # polled while the job runs
    def finish(self) -> bool: ...  # after the container is gone; True if over the cap
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

    def started(self) -> None:
        self._release(self.source)

    def over_cap(self) -> bool:
        return False  # the kernel enforces it

    def finish(self) -> bool:
        fs = os.fstatvfs(self._fd)
        size, _ = usage(self._root, self._cap, OUT_MAX_ENTRIES)
        over = fs.f_bavail == 0 or fs.f_favail == 0 or size > self._cap
        if not over:
            copy_tree(self._root, self._out_dir)
        return over

    def close(self) -> None:
        try:
            self._release(self.source)
        finally:
            os.close(self._fd)  # the last reference: the kernel frees the tmpfs

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
        size, entries = usage(self.source, self._cap, OUT_MAX_ENTRIES)
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


def usage(root: Path, max_size: int, max_entries: int) -> tuple[int, int]:
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


def copy_tree(src: Path, dest: Path) -> None:
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
