"""Discrete-event engine: a virtual clock and a heap of timed callbacks.

Theory of operation (STYLE.md §2.3, nakamoto's simulator). Everything that happens in a
simulation is a callback scheduled at a virtual time. The heap orders entries by
``(time, seq)``: ``seq`` is a counter, so two entries at the same time run in the order they
were scheduled, and the heap never compares callbacks. One seeded ``random.Random`` is the only
source of randomness, so the same seed replays the same trace. Time only moves forwards.

Cancelling is lazy: an entry is never removed from the heap; whoever scheduled it keeps a token
(a generation number, a flag) and the callback returns at once when the token is stale. This
keeps ``schedule`` at O(log n) and avoids a search through the heap.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

Callback = Callable[[Any], None]


class Engine:
    """The virtual clock, the event heap and the seeded RNG of one simulation run.

    Args:
        seed: seeds the run's only ``random.Random``.
        start: virtual time of the first instant (unix seconds: the core checks signed
            timestamps against ``now``, so a realistic epoch keeps those checks meaningful).
    """

    def __init__(self, seed: int, *, start: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.now = start
        self.start = start
        self._heap: list[tuple[float, int, Callback, Any]] = []
        self._seq = 0
        self.events = 0  # callbacks run so far: the simulator's unit of work
        self.stopped = False

    def at(self, when: float, fn: Callback, arg: Any = None) -> None:
        """Run ``fn(arg)`` at virtual time ``when`` (never before ``now``)."""
        if when < self.now:
            when = self.now
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, fn, arg))

    def after(self, delay: float, fn: Callback, arg: Any = None) -> None:
        """Run ``fn(arg)`` ``delay`` virtual seconds from now."""
        self.at(self.now + max(0.0, delay), fn, arg)

    def stop(self) -> None:
        """End ``run_until`` after the callback that is running now."""
        self.stopped = True

    def pending(self) -> int:
        return len(self._heap)

    def step(self) -> bool:
        """Run the next callback; False when the heap is empty."""
        if not self._heap:
            return False
        when, _, fn, arg = heapq.heappop(self._heap)
        assert when >= self.now, "time only moves forwards"
        self.now = when
        self.events += 1
        fn(arg)
        return True

    def run_until(
        self,
        until: float,
        *,
        progress: Callable[[float], None] | None = None,
        progress_every: int = 20_000,
    ) -> None:
        """Run callbacks in (time, seq) order up to and including virtual time ``until``, or
        until a callback calls ``stop()``.

        Args:
            until: last virtual time to process; ``now`` is ``until`` afterwards unless stopped.
            progress: called with ``now`` every ``progress_every`` events (for a progress bar).
        """
        heap = self._heap
        pop = heapq.heappop
        count = 0
        self.stopped = False
        try:
            while heap and heap[0][0] <= until:
                when, _, fn, arg = pop(heap)
                self.now = when
                fn(arg)
                count += 1
                if self.stopped:
                    return
                if progress is not None and count % progress_every == 0:
                    progress(self.now)
            self.now = max(self.now, until)
        finally:
            self.events += count
