"""Alarms: how every machine keeps its deadlines in one place.

Each machine has one function that lists its alarms (when something falls due, and what). Its
``tick`` fires the alarms that are due at ``now``, and its ``next_wakeup`` is the earliest
``at`` among them, so the two cannot drift apart: there is no second copy of the conditions
for ``next_wakeup`` to restate. A driver may therefore tick only at ``next_wakeup`` (the
simulator does) and miss nothing; ticking earlier does nothing (the flow tests check that).

An alarm is due when ``at <= now <= until``: ``until`` closes a window after which the alarm
no longer fires (a result resent only until the job's deadline); ``INF`` when it has none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from operator import itemgetter

INF = math.inf


class Alarm(tuple):  # (at, what, subject, until)
    """Built as ``Alarm((at, what, subject, until))``: one C-level call. Every next_wakeup
    builds one per open job and the simulator asks after almost every event, so a dataclass
    (or a NamedTuple's Python ``__new__``) cost it a noticeable share of its run time."""

    __slots__ = ()
    at = property(itemgetter(0))
    what = property(itemgetter(1))
    subject = property(itemgetter(2))
    until = property(itemgetter(3))

    def due(self, now: float) -> bool:
        return self[0] <= now <= self[3]


def earliest(alarms: Iterable[Alarm | None]) -> float:
    """The first ``at`` of the alarms that can still fire (``inf`` when none can; None is
    no alarm)."""
    at = math.inf
    for a in alarms:
        if a is not None and a[0] < at and a[0] <= a[3]:
            at = a[0]
    return at


__all__ = ["INF", "Alarm", "earliest"]
