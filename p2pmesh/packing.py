"""Deterministic, hostile-input-safe tar packing for job inputs and outputs.

Theory of operation
-------------------
A job's input folder travels to a worker, and its output folder travels back, as one plain tar
archive (USTAR, with PAX headers only where USTAR cannot say it: long or non-ASCII names, large
sizes). The archive is a *function of the folder's content*: entries sorted by path, mtime 0,
uid/gid 0, empty owner names, and modes reduced to 0o755 (directories, and files with any execute
bit) or 0o644. So the same content gives the same bytes, and ``digest`` of those bytes can be
signed, compared across workers and used to address blobs.

Only regular files and directories are allowed. Symbolic links, hard links, devices, FIFOs and
sockets are refused rather than skipped, so a folder is never silently packed as something else.

Invariants of ``unpack`` (the decoder, fed bytes from a remote peer, R7):

* on any input it either writes only inside ``dest`` and returns, or raises ``PackingError``
  and leaves ``dest`` as it found it (absent or empty); nothing else escapes;
* it never creates a link, so no later write can be redirected, and it never follows one;
* the byte total is checked *before* each member is written, so ``max_bytes`` bounds disk use.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

from p2pmesh.core.tarnames import member_kind, safe_parts
from p2pmesh.errors import PackingError

__all__ = ["DEFAULT_MAX_FILES", "digest", "pack_dir", "unpack"]

# Entries (files + directories) per archive. Far above what a job folder needs, low enough that
# walking or unpacking a hostile archive stays cheap.
DEFAULT_MAX_FILES = 10_000
# A member name longer than Linux PATH_MAX cannot be created anyway; refusing it up front gives a
# clear message instead of an OSError halfway through.

_DIR_MODE = 0o755
_EXEC_MODE = 0o755
_FILE_MODE = 0o644
_COPY_CHUNK = 1 << 20


def digest(data: bytes) -> str:
    """Return the content address of an archive: ``"sha256:" + 64 lowercase hex digits``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pack_dir(root: Path, *, max_bytes: int, max_files: int = DEFAULT_MAX_FILES) -> bytes:
    """Pack the contents of ``root`` into a deterministic tar archive.

    Args:
        root: the folder to pack; its own name and metadata are not recorded.
        max_bytes: the most bytes the returned archive may have (file contents count toward it
            while walking, so an oversized folder is refused before it is read).
        max_files: the most entries (files plus directories) the archive may hold.

    Returns:
        The archive bytes.

    Raises:
        PackingError: ``root`` is not a directory; an entry is a link, device, FIFO or socket,
            has a name that is not UTF-8, or changed while being read; or a limit is exceeded.
    """
    try:
        root_st = os.lstat(root)
    except OSError as exc:
        raise PackingError(f"cannot read folder {root}: {exc.strerror}") from exc
    if not stat.S_ISDIR(root_st.st_mode):
        raise PackingError(f"{root} is not a directory")

    entries = _walk(root, max_bytes=max_bytes, max_files=max_files)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for rel, st in entries:
            info = tarfile.TarInfo(rel)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                info.mode = _DIR_MODE
                tar.addfile(info)
            else:
                info.type = tarfile.REGTYPE
                info.mode = _EXEC_MODE if st.st_mode & 0o111 else _FILE_MODE
                info.size = st.st_size
                with _open_listed(root / rel, st, rel) as fh:
                    try:
                        tar.addfile(info, fh)
                    except OSError as exc:  # tarfile's "unexpected end of data"
                        raise PackingError(f"{rel}: file shrank while packing") from exc
                    if fh.read(1):
                        raise PackingError(f"{rel}: file grew while packing")
            if buf.tell() > max_bytes:
                raise PackingError(f"archive exceeds {max_bytes} bytes")
    data = buf.getvalue()
    if len(data) > max_bytes:
        raise PackingError(f"archive exceeds {max_bytes} bytes")
    return data


def _walk(root: Path, *, max_bytes: int, max_files: int) -> list[tuple[str, os.stat_result]]:
    """List ``(relative posix path, lstat)`` for every entry under root, sorted by path."""
    found: list[tuple[str, os.stat_result]] = []
    content_bytes = 0
    pending: list[str] = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(root / rel_dir if rel_dir else root) as it:
                children = list(it)
        except OSError as exc:
            raise PackingError(f"cannot list {rel_dir or '.'}: {exc.strerror}") from exc
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            _check_utf8(rel)
            try:
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                raise PackingError(f"{rel}: cannot read: {exc.strerror}") from exc
            kind = _refused_kind(st)
            if kind:
                raise PackingError(f"{rel}: {kind} not allowed")
            found.append((rel, st))
            if len(found) > max_files:
                raise PackingError(f"more than {max_files} entries")
            if stat.S_ISDIR(st.st_mode):
                pending.append(rel)
            else:
                content_bytes += st.st_size
                if content_bytes > max_bytes:
                    raise PackingError(f"contents exceed {max_bytes} bytes")
    # Sorting plain strings puts every directory before its contents (a prefix sorts first).
    found.sort(key=lambda e: e[0])
    return found


def _refused_kind(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return ""
    if stat.S_ISREG(mode):
        # A second name for the same inode could point outside the folder's meaning (or be
        # modified through the other name mid-pack); the spec refuses it like a symlink.
        return "hard link" if st.st_nlink > 1 else ""
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _check_utf8(rel: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError as exc:
        shown = rel.encode("utf-8", "backslashreplace").decode("ascii", "replace")
        raise PackingError(f"{shown}: name is not valid UTF-8") from exc


@contextlib.contextmanager
def _open_listed(path: Path, listed: os.stat_result, rel: str) -> Iterator[io.BufferedReader]:
    """Open a regular file without following links and check it is the one that was listed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PackingError(f"{rel}: cannot open: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        same = (st.st_dev, st.st_ino, st.st_size) == (
            listed.st_dev,
            listed.st_ino,
            listed.st_size,
        )
        if not (same and stat.S_ISREG(st.st_mode)):
            raise PackingError(f"{rel}: file changed while packing")
        yield fh


def unpack(data: bytes, dest: Path, *, max_bytes: int, max_files: int = DEFAULT_MAX_FILES) -> None:
    """Unpack a tar archive made by ``pack_dir`` (or a hostile imitation) into ``dest``.

    Args:
        data: the archive; only uncompressed tar is accepted.
        dest: where to unpack; must not exist yet, or be an empty directory (not a link).
        max_bytes: the most bytes of file content the archive may unpack to.
        max_files: the most entries (files plus directories) it may hold.

    Raises:
        PackingError: the archive is malformed; a member is a link, device, FIFO or sparse
            file, has an absolute, ``..``, non-normal or duplicate name; a limit is exceeded;
            or ``dest`` is unusable. ``dest`` is then back as it was (absent or empty).
    """
    created = _prepare_dest(dest)
    try:
        _extract(data, dest, max_bytes=max_bytes, max_files=max_files)
    except BaseException:
        _undo(dest, created)
        raise


def _prepare_dest(dest: Path) -> bool:
    """Make sure dest is a fresh, empty, real directory; return True if it was created here."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        try:
            dest.mkdir(parents=True)
        except OSError as exc:
            raise PackingError(f"cannot create {dest}: {exc.strerror}") from exc
        return True
    except OSError as exc:
        raise PackingError(f"cannot use {dest}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise PackingError(f"{dest} exists and is not a directory")
    with os.scandir(dest) as it:
        if next(it, None) is not None:
            raise PackingError(f"{dest} is not empty")
    return False


def _undo(dest: Path, created: bool) -> None:
    # Everything under dest was made by _extract, which never makes links, so rmtree stays inside.
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    with contextlib.suppress(OSError), os.scandir(dest) as it:
        for child in list(it):
            if child.is_dir(follow_symlinks=False):
                shutil.rmtree(child.path, ignore_errors=True)
            else:
                os.unlink(child.path)


# What tarfile raises on malformed input. The fuzz test in tests/unit/test_packing.py holds this
# list to account: any other exception type escaping unpack is a bug.
_MALFORMED = (tarfile.TarError, EOFError, ValueError, UnicodeError, OverflowError)


def _extract(data: bytes, dest: Path, *, max_bytes: int, max_files: int) -> None:
    seen: set[str] = set()
    total = 0
    try:
        # "r:" is plain tar only: a compressed member stream would let a small archive expand
        # past any byte limit before we could count it.
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            # Iterating reads one header at a time, so a huge member count fails at max_files
            # rather than after parsing everything.
            for count, member in enumerate(tar, start=1):
                if count > max_files:
                    raise PackingError(f"more than {max_files} entries")
                parts = safe_parts(member.name)
                name = "/".join(parts)
                if name in seen:
                    raise PackingError(f"{name}: duplicate entry")
                seen.add(name)
                if member.isdir():
                    _make_dirs(dest, parts)
                    continue
                if not member.isreg() or member.sparse is not None:
                    raise PackingError(f"{name}: {member_kind(member)} not allowed")
                if member.size < 0:  # base-256 size fields can be negative
                    raise PackingError(f"{name}: negative size")
                total += member.size
                if total > max_bytes:
                    raise PackingError(f"contents exceed {max_bytes} bytes")
                _make_dirs(dest, parts[:-1])
                source = tar.extractfile(member)
                assert source is not None  # a regular member always has a file object
                mode = _EXEC_MODE if member.mode & 0o111 else _FILE_MODE
                _write_file(dest.joinpath(*parts), source, member.size, mode, name)
    except PackingError:
        raise
    except _MALFORMED as exc:
        raise PackingError(f"malformed archive: {exc}") from exc
    except OSError as exc:
        raise PackingError(f"cannot unpack: {exc.strerror or exc}") from exc


def _make_dirs(dest: Path, parts: list[str]) -> None:
    path = dest
    for part in parts:
        path = path / part
        try:
            os.mkdir(path, _DIR_MODE)
        except FileExistsError:
            # Only directories made by us can be here as directories; anything else (a file we
            # wrote under that name) must not become a parent.
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise PackingError(f"{'/'.join(parts)}: parent is a file") from None
        else:
            os.chmod(path, _DIR_MODE)  # mkdir's mode is filtered by the umask


def _write_file(path: Path, source: io.BufferedReader, size: int, mode: int, name: str) -> None:
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode
        )
    except FileExistsError:
        raise PackingError(f"{name}: duplicate entry") from None
    with os.fdopen(fd, "wb") as out:
        left = size
        while left:
            chunk = source.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise PackingError(f"{name}: archive ends inside the file")
            out.write(chunk)
            left -= len(chunk)
        os.fchmod(out.fileno(), mode)
