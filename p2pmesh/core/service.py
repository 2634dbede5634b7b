"""Service jobs: a long-lived container its requester reaches through a tunnel (PROTOCOL.md §7.13).

A job with ``"service": {"port": N, "idle_timeout_s": S}`` runs once (redundancy 1: a session
cannot be cross-validated) and keeps ``network: none``. The worker forwards connections from the
job's requester, and only from it, over a libp2p stream into the container's port. Everything
here is a pure decision; the daemon and adapters do the I/O:

- the job file field and its wire form (``check_service``, ``service_wire``);
- who may open a connection, and how many at once (``Session.admit``);
- when the session ends (``Session.due``): ``idle_timeout_s`` with no connection open, or the
  minutes the budget pays for; ``timeout_s`` is enforced by the executor as for any job;
- what it costs: a price per started minute of the container's run, capped by the budget
  (``charge``), and how many of the worker's claimed milliseconds the requester accepts
  (``billable_ms``).

Theory of operation (worker)::

    inputs fetched ─▶ running (session opens, idle clock starts)
      connect (the requester, < MAX_CONNECTIONS open) ─▶ admitted; no idle clock while one is open
      last connection closed ─▶ the idle clock starts again
      idle_timeout_s with none open, or the budget's minutes used ─▶ stop the container
      cancel from the requester ─▶ stop the container
      container finished ─▶ result (as any job) ─▶ the requester pays charge(...) once
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_IDLE_TIMEOUT_S = 600
MIN_IDLE_TIMEOUT_S = 10
MAX_IDLE_TIMEOUT_S = 86_400
MIN_PORT, MAX_PORT = 1, 65_535
# Connections one session forwards at once: a notebook opens a handful (kernel websockets,
# static files); more is a misbehaving or hostile client, and each costs the worker a socket.
MAX_CONNECTIONS = 16
MINUTE_MS = 60_000
# The requester accepts a worker's claimed run time up to what its own clock saw between the
# award and the result, plus this much for whole-second clocks on both sides.
CLOCK_SLACK_MS = 2_000
FIELDS = ("port", "idle_timeout_s")


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    port: int
    idle_timeout_s: int = DEFAULT_IDLE_TIMEOUT_S


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_service(value: Any, *, wire: bool) -> tuple[ServiceSpec | None, list[tuple[str, str]]]:
    """The ``service`` field of a job file (or wire job): its spec, or ``(path, message)``
    problems. On the wire both keys are required (the file's default is filled in)."""
    if not isinstance(value, dict):
        return None, [("service", f"must be an object, got {type(value).__name__}")]
    problems: list[tuple[str, str]] = []
    for key in sorted(k for k in value if k not in FIELDS):
        problems.append((f"service.{key}"[:80], "unknown field"))
    port = value.get("port")
    if port is None:
        problems.append(("service.port", "required"))
    elif not _is_int(port) or not MIN_PORT <= port <= MAX_PORT:
        why = f"must be an integer from {MIN_PORT} to {MAX_PORT}, got {port!r}"
        problems.append(("service.port", why[:200]))
    idle = value.get("idle_timeout_s", None if wire else DEFAULT_IDLE_TIMEOUT_S)
    if idle is None:
        problems.append(("service.idle_timeout_s", "required"))
    elif not _is_int(idle) or not MIN_IDLE_TIMEOUT_S <= idle <= MAX_IDLE_TIMEOUT_S:
        problems.append(
            (
                "service.idle_timeout_s",
                f"must be an integer from {MIN_IDLE_TIMEOUT_S} to {MAX_IDLE_TIMEOUT_S}, "
                f"got {idle!r}"[:200],
            )
        )
    if problems:
        return None, problems
    return ServiceSpec(port=port, idle_timeout_s=idle), []


def check_service_job(service: ServiceSpec | None, redundancy: Any) -> list[tuple[str, str]]:
    """Rules between fields: a session runs once and cannot be compared with another."""
    if service is None or redundancy == 1:
        return []
    return [
        (
            "redundancy",
            f"a service job runs once (replicas and cross-validation do not apply): "
            f"must be 1, got {redundancy!r}"[:200],
        )
    ]


def service_wire(s: ServiceSpec) -> dict[str, int]:
    return {"idle_timeout_s": s.idle_timeout_s, "port": s.port}


def service_document(s: ServiceSpec) -> dict[str, int]:
    return {"port": s.port, "idle_timeout_s": s.idle_timeout_s}


# -- money ----------------------------------------------------------------------------------------
def minutes(run_ms: int) -> int:
    """Started minutes of a run: a session that ran at all costs at least one."""
    return max(1, -(-max(0, run_ms) // MINUTE_MS))


def charge(price_per_minute: int, run_ms: int, budget: int) -> int:
    """What a session costs: its started minutes at the bid's price, never above the budget."""
    return min(budget, price_per_minute * minutes(run_ms))


def paid_minutes(price_per_minute: int, budget: int) -> int:
    """Whole minutes the budget pays for at this price (a free session: unlimited)."""
    if price_per_minute <= 0:
        return 1 << 40
    return budget // price_per_minute


def billable_ms(claimed_ms: int, awarded_at: int, reported_at: int) -> int:
    """The worker's claimed run time, capped by what the requester's clock allows: the
    container ran between the award and the result, never longer."""
    observed = max(0, reported_at - awarded_at) * 1000 + CLOCK_SLACK_MS
    return min(max(0, claimed_ms), observed)


def session_delivered(status: str, run_ms: int) -> bool:
    """A result that stands for a session the worker ran (paid), rather than one that never
    started (``error``: the inputs or the container could not be had)."""
    return status != "error" and run_ms > 0


# -- the worker's session -------------------------------------------------------------------------
@dataclass(slots=True)
class Session:
    """One running service on the worker: who may connect, what is open, when it ends."""

    job_id: str
    requester: str
    port: int
    idle_timeout_s: int
    started_at: int
    ends_at: int  # the budget's last paid minute (``timeout_s`` is the executor's)
    last_active: int = 0  # the last time a connection was open (or the start)
    open: set[int] = field(default_factory=set)
    ending: str = ""  # why the container is being stopped ("" while it serves)
    connections: int = 0  # admitted so far, for the log and the view

    def admit(self, peer: str, conn_id: int, now: int, *, probe: bool) -> tuple[bool, str]:
        """May ``peer`` open a connection now? ``probe``: only ask, nothing opens."""
        if peer != self.requester:
            return False, "not the requester of this job: only it may connect"
        if self.ending:
            return False, f"the session is ending ({self.ending})"
        if not probe and len(self.open) >= MAX_CONNECTIONS:
            return False, f"too many connections open ({MAX_CONNECTIONS} at most per session)"
        self.last_active = now
        if not probe:
            self.open.add(conn_id)
            self.connections += 1
        return True, ""

    def closed(self, conn_id: int, now: int) -> None:
        if conn_id in self.open:
            self.open.discard(conn_id)
            self.last_active = now

    def idle_at(self) -> float:
        """When the idle rule would end the session (never while a connection is open)."""
        if self.open:
            return float("inf")
        return float(self.last_active + self.idle_timeout_s)

    def due(self, now: int) -> str | None:
        """Why the session must end now, or None."""
        if self.ending:
            return None
        if now >= self.ends_at:
            return "the budget's minutes are used"
        if now >= self.idle_at():
            return f"idle for {self.idle_timeout_s} s"
        return None

    def wakeup(self) -> float:
        if self.ending:
            return float("inf")
        return min(float(self.ends_at), self.idle_at())


def open_session(
    job_id: str, requester: str, spec: ServiceSpec, *, price: int, budget: int, now: int
) -> Session:
    ends = now + paid_minutes(price, budget) * 60
    return Session(
        job_id=job_id,
        requester=requester,
        port=spec.port,
        idle_timeout_s=spec.idle_timeout_s,
        started_at=now,
        ends_at=ends,
        last_active=now,
    )


def session_view(s: Session) -> dict[str, Any]:
    return {
        "port": s.port,
        "open_connections": len(s.open),
        "connections": s.connections,
        "idle_timeout_s": s.idle_timeout_s,
        "ends_at": s.ends_at,
        "ending": s.ending,
    }
