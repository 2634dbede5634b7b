"""Alarms: how every machine keeps its deadlines in one place.

Each machine has one function that lists its alarms (when something falls due, and what). Its
``tick`` fires the alarms that are due at ``now``, and its ``next_wakeup`` is the earliest
``at`` among them, so the two cannot drift apart: there is no second copy of the conditions
for ``next_wakeup`` to restate. A driver may therefore tick only at ``next_wakeup`` (the
simulator does) and miss nothing; ticking earlier does nothing (the flow tests check that).

An alarm is due when ``at <= now <= until``: ``until`` closes a window after which the alarm
no longer fires (a result resent only until the job's deadline).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple


class Alarm(NamedTuple):
    # A tuple, not a dataclass: every next_wakeup builds one per open job, and the simulator
    # asks after almost every event (a frozen dataclass cost it a tenth of its run time).
    at: float
    what: str
    subject: Any = None
    until: float = math.inf

    def due(self, now: float) -> bool:
        return self.at <= now <= self.until


def earliest(alarms: Iterable[Alarm | None]) -> float:
    """The first ``at`` of the alarms that can still fire (``inf`` when none can; None is
    no alarm)."""
    at = math.inf
    for a in alarms:
        if a is not None and a.at < at and a.at <= a.until:
            at = a.at
    return at


__all__ = ["Alarm", "earliest"]
