"""What the node's cache keeps and what it gives up: least recently used first, within a limit.

The cache holds what this node fetched or made for jobs and may need again: input blobs,
images it loaded into its engine from the mesh or pulled, and the blobs it exported of its own
images to serve them. Everything in it is named by content, so a hit is a hit whoever asked.
Pure: the daemon owns the files, the engine and the table (``cache`` in the store).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

KINDS = ("input", "image", "export")  # an input blob; an image p2pmesh loaded; an export blob


@dataclass(frozen=True, slots=True)
class Entry:
    key: str  # a blob's digest, or an image's ID
    kind: str
    size: int
    last_used: float


def used_bytes(entries: Iterable[Entry]) -> int:
    return sum(e.size for e in entries)


def to_evict(
    entries: Iterable[Entry], limit_bytes: int, *, keep: frozenset[str] = frozenset()
) -> list[Entry]:
    """Entries to remove, oldest use first, until the rest fits ``limit_bytes``.

    ``keep`` names entries in use (a job's image or inputs while it runs): they are never
    chosen, so the cache may stay above its limit until they are released.
    """
    pool = sorted(entries, key=lambda e: (e.last_used, e.key))
    over = used_bytes(pool) - limit_bytes
    out: list[Entry] = []
    for e in pool:
        if over <= 0:
            break
        if e.key in keep:
            continue
        out.append(e)
        over -= e.size
    return out
