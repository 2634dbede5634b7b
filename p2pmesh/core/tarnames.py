"""Rules for member names and kinds in our tar archives, shared by the packer and the comparator.

An archive from a peer is hostile: a name must be relative, normal (no ``.``, ``..`` or empty
parts), valid UTF-8, NUL-free and at most ``MAX_NAME_BYTES``; only regular files and folders
are allowed. ``p2pmesh.packing`` (which writes to disk) and ``core.validation.compare`` (which
reads archives in memory) must refuse exactly the same things.
"""

from __future__ import annotations

import tarfile

from p2pmesh.errors import PackingError

MAX_NAME_BYTES = 4096


def show_name(name: str) -> str:
    """A name fit for a one-line error message: unprintable characters escaped, length capped."""
    shown = name if name.isprintable() else ascii(name)[1:-1]
    return shown if len(shown) <= 200 else shown[:200] + "…"


def safe_parts(name: str) -> list[str]:
    """The path parts of a member name; ``PackingError`` for anything unsafe."""
    if not name:
        raise PackingError("entry with an empty name")
    shown = show_name(name)
    if "\x00" in name:
        raise PackingError(f"{shown}: NUL in name")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise PackingError(f"{shown}: name too long")
    if name.startswith("/"):
        raise PackingError(f"{shown}: absolute name")
    parts = name.split("/")
    if ".." in parts:
        raise PackingError(f"{shown}: '..' in name")
    if any(p in ("", ".") for p in parts):
        raise PackingError(f"{shown}: name is not in normal form")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PackingError(f"{shown}: name is not valid UTF-8") from exc
    return parts


def member_kind(member: tarfile.TarInfo) -> str:
    """What a refused member is, for the error message."""
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.isdev():
        return "device or FIFO"
    if member.sparse is not None:
        return "sparse file"
    return f"entry type {member.type!r}"
