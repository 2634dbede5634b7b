"""Memoised parsing of signed messages: one check per distinct byte string, not per reader.

Every ``parse_*`` of the wire messages maps exact bytes to a frozen value or raises, and
depends on nothing else (no clock, no state). Yet one process parses the same bytes many times:
a builder reads back what it built, gossip delivers duplicates, a requester re-reads bids it
stored, and in a simulation every one of thousands of peers reads the same offer. ``by_bytes``
keeps successful results in a bounded LRU keyed by the bytes (and keyword arguments); failures
are never kept, so hostile input costs its full check every time and proves nothing later.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

PARSE_CACHE_SIZE = 1 << 14


def by_bytes(fn: F) -> F:
    """Memoise ``fn(raw: bytes, **kw)``, whose result must be immutable."""
    cached = functools.lru_cache(maxsize=PARSE_CACHE_SIZE)(fn)

    @functools.wraps(fn)
    def parse(raw: Any, **kw: Any) -> Any:
        if type(raw) is not bytes:  # a bytearray or memoryview: unhashable or mutable
            return fn(raw, **kw)
        return cached(raw, **kw)

    parse.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    parse.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return parse  # type: ignore[return-value]


def interned(fn: F) -> F:
    """Memoise ``fn(raw: bytes)`` for as long as anyone holds its (immutable) result.

    For values that are kept anyway, such as ledger blocks: every holder of the same bytes
    shares one object (many chains in one process, or the blocks a simulation's peers all
    replicate), and an entry costs nothing once the last holder lets go.
    """
    live: weakref.WeakValueDictionary[bytes, Any] = weakref.WeakValueDictionary()

    @functools.wraps(fn)
    def parse(raw: Any) -> Any:
        if type(raw) is not bytes:
            return fn(raw)
        value = live.get(raw)
        if value is None:
            value = fn(raw)
            live[raw] = value
        return value

    return parse  # type: ignore[return-value]
