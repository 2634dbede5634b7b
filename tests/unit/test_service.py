"""Service jobs in the core (core/service.py): the job field, the session rules, the bill, and
whole flows through real ``Node``s in virtual time (the router of test_auction_flow)."""

from __future__ import annotations

from typing import Any

import pytest

import tests.unit.test_auction_flow as flow
from p2pmesh.adapters.libp2p.service import parse_request
from p2pmesh.core import service as svc
from p2pmesh.core.effects import AnswerServiceConnect, RunContainer, StopContainer
from p2pmesh.core.events import CancelRequested, ServiceConnectionClosed, ServiceConnectRequested
from p2pmesh.core.jobspec import job_digest, job_from_wire, job_to_wire, parse_job
from p2pmesh.core.node import NodeConfig
from p2pmesh.errors import DecodeError, JobSpecError
from tests.unit.test_auction_flow import JOB_ID, Mesh, Script, make_job

BASE: dict[str, Any] = {
    "schema_version": 1,
    "name": "web",
    "image": "p2pmesh/busybox:1",
    "command": ["httpd", "-f", "-p", "8080"],
    "max_price": 2,
    "budget": 10,
}


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(JobSpecError) as exc:
        parse_job(doc)
    return list(exc.value.problems)


# -- the job field --------------------------------------------------------------------------------
def test_service_field_defaults_and_wire_form() -> None:
    spec = parse_job({**BASE, "service": {"port": 8080}})
    assert spec.service == svc.ServiceSpec(8080, svc.DEFAULT_IDLE_TIMEOUT_S)
    assert spec.redundancy == 1  # a service runs once, so the file may leave it out
    wire = job_to_wire(spec)
    assert wire["service"] == {"idle_timeout_s": 600, "port": 8080}
    assert job_from_wire(wire).spec == spec
    # A batch job's wire form (and so its digest) has no trace of the field.
    plain = parse_job(BASE)
    assert "service" not in job_to_wire(plain) and plain.service is None
    assert job_digest(plain) != job_digest(spec)


def test_service_refusals_name_the_field() -> None:
    assert _problems({**BASE, "service": {"port": 8080}, "redundancy": 2}) == [
        "redundancy: a service job runs once (replicas and cross-validation do not apply): "
        "must be 1, got 2"
    ]
    assert _problems({**BASE, "service": {"port": 8080}, "redundancy": "auto"})[0].startswith(
        "redundancy: a service job runs once"
    )
    assert _problems({**BASE, "service": {"port": 0}}) == [
        "service.port: must be an integer from 1 to 65535, got 0"
    ]
    assert _problems({**BASE, "service": {"port": True}})[0].startswith("service.port")
    assert _problems({**BASE, "service": {}}) == ["service.port: required"]
    assert _problems({**BASE, "service": {"port": 80, "idle_timeout_s": 5}}) == [
        "service.idle_timeout_s: must be an integer from 10 to 86400, got 5"
    ]
    assert _problems({**BASE, "service": {"port": 80, "host": "x"}}) == [
        "service.host: unknown field"
    ]
    assert _problems({**BASE, "service": 8080}) == ["service: must be an object, got int"]
    assert _problems({**BASE, "service": {"port": 80}, "network": "bridge"}) == [
        'network: a service job keeps network "none"'
    ]


def test_service_validation_is_accepted_and_ignored() -> None:
    spec = parse_job({**BASE, "service": {"port": 80}, "validation": {"mode": "numeric"}})
    assert spec.service is not None and spec.validation.mode == "numeric"


def test_service_wire_needs_both_keys() -> None:
    wire = job_to_wire(parse_job({**BASE, "service": {"port": 80}}))
    del wire["service"]["idle_timeout_s"]
    with pytest.raises(JobSpecError, match=r"service\.idle_timeout_s: required"):
        job_from_wire(wire)


# -- money and sessions ---------------------------------------------------------------------------
def test_service_charge_by_started_minute_within_budget() -> None:
    assert [svc.minutes(ms) for ms in (0, 1, 60_000, 60_001, 180_000)] == [1, 1, 1, 2, 3]
    assert svc.charge(2, 61_000, 100) == 4
    assert svc.charge(2, 10 * 60_000, 7) == 7  # the budget caps the session
    assert svc.paid_minutes(3, 10) == 3 and svc.paid_minutes(0, 10) > 10**9
    # A claim longer than the requester's own clock allows is cut to it.
    assert svc.billable_ms(600_000, 1000, 1030) == 32_000
    assert svc.billable_ms(20_000, 1000, 1030) == 20_000
    assert not svc.session_delivered("error", 5) and not svc.session_delivered("killed", 0)
    assert svc.session_delivered("killed", 5) and svc.session_delivered("timeout", 5)


def test_service_session_admits_the_requester_only_and_limits_connections() -> None:
    s = svc.open_session("j", "R", svc.ServiceSpec(80, 30), price=1, budget=10, now=100)
    assert s.ends_at == 100 + 600
    ok, why = s.admit("X", 1, 101, probe=False)
    assert not ok and why == "not the requester of this job: only it may connect"
    assert s.admit("R", 1, 101, probe=True) == (True, "") and not s.open  # a probe opens nothing
    for conn in range(svc.MAX_CONNECTIONS):
        assert s.admit("R", conn, 102, probe=False)[0]
    ok, why = s.admit("R", 999, 102, probe=False)
    assert not ok and why.startswith("too many connections open")
    s.closed(0, 103)
    assert s.admit("R", 999, 103, probe=False)[0]


def test_service_session_idle_and_budget_ends() -> None:
    s = svc.open_session("j", "R", svc.ServiceSpec(80, 30), price=5, budget=10, now=100)
    assert s.due(129) is None and s.due(130) == "idle for 30 s"
    s.admit("R", 1, 120, probe=False)
    assert s.due(1000 - 1) is None or s.due(219) is None  # no idle end while one is open
    assert s.due(219) is None and s.due(220) == "the budget's minutes are used"
    s.closed(1, 200)
    assert s.wakeup() == 220.0  # the budget's end comes before idle (200 + 30)
    s.ending = "cancelled"
    assert s.due(10_000) is None and s.admit("R", 2, 201, probe=False)[0] is False


def test_service_request_frame_is_checked() -> None:
    from p2pmesh.core import codec

    assert parse_request(codec.encode({"job_id": JOB_ID, "probe": False})) == (JOB_ID, False)
    for bad in (
        {"job_id": JOB_ID},
        {"job_id": "A" * 32, "probe": False},
        {"job_id": JOB_ID, "probe": 0},
        {"job_id": JOB_ID, "probe": True, "x": 1},
        [JOB_ID, True],
    ):
        with pytest.raises(DecodeError):
            parse_request(codec.encode(bad))
    with pytest.raises(DecodeError):
        parse_request(b"\xc1")


# -- whole flows ----------------------------------------------------------------------------------
def _service_mesh(refusal: str = "", claimed_s: int = 61) -> Mesh:
    """A requester A, a worker B at 2 a minute, and C, too dear to bid (a bystander). B's
    container serves until stopped, and then claims ``claimed_s`` seconds of run."""
    mesh = Mesh(prices=(2, 2, 9), config=NodeConfig(newcomer_checks=0, service_refusal=refusal))
    mesh.scripts = {"B": Script(hang=True, run_s=claimed_s)}
    return mesh


def _service_job(**service: Any) -> Any:
    return make_job(
        redundancy=1, max_price=2, budget=10, timeout_s=3600, deadline_s=7200,
        service={"port": 8080, **service},
    )  # fmt: skip


def _ask(mesh: Mesh, peer: str, conn: int, *, probe: bool = False) -> AnswerServiceConnect:
    out = mesh.deliver("B", ServiceConnectRequested(JOB_ID, mesh.ids[peer], conn, probe))
    answers = [e for e in out if isinstance(e, AnswerServiceConnect)]
    assert len(answers) == 1, out
    return answers[0]


def _pay_amounts(mesh: Mesh) -> list[int]:
    chain = mesh.node("A").ledger.ledger.chains.get(mesh.ids["A"], [])
    return [b.tx.amount for b in chain if b.kind == "proposal" and b.tx.job_id == JOB_ID]


def test_service_flow_cancel_pays_started_minutes() -> None:
    mesh = _service_mesh()
    mesh.submit("A", _service_job())
    mesh.run(5)
    assert mesh.work("B").state == "running" and mesh.effects(RunContainer, "B")
    assert mesh.node("A").job(JOB_ID)["service"]["worker"] == mesh.ids["B"]
    # Only the requester gets in; C (another node) is refused with the reason.
    assert _ask(mesh, "C", 1).reason == "not the requester of this job: only it may connect"
    a = _ask(mesh, "A", 2)
    assert a.ok and a.port == 8080
    mesh.run(90)  # a connection stays open: no idle end, however long
    assert mesh.work("B").state == "running"
    mesh.deliver("B", ServiceConnectionClosed(JOB_ID, 2))
    mesh.run(30)
    # The user ends it: the worker stops the container and reports; the requester pays.
    mesh.deliver("A", CancelRequested(JOB_ID))
    mesh.settle()
    mesh.run_job()
    j = mesh.job()
    assert j.state == "done", j.history
    assert mesh.effects(StopContainer, "B") == [StopContainer(JOB_ID)]
    run_ms = mesh.work("B").result.run_ms  # type: ignore[union-attr]
    assert _pay_amounts(mesh) == [svc.charge(2, run_ms, 10)]
    assert mesh.node("A").job(JOB_ID)["price_total"] == _pay_amounts(mesh)[0]
    # The worker agreed to exactly that figure.
    agreed = [
        b.tx.amount
        for b in mesh.node("B").ledger.ledger.chains.get(mesh.ids["B"], [])
        if b.kind == "agreement"
    ]
    assert agreed == _pay_amounts(mesh)
    # A session that ended is closed to everyone.
    assert not _ask(mesh, "A", 3).ok


def test_service_flow_idle_session_ends_by_itself() -> None:
    mesh = _service_mesh()
    mesh.submit("A", _service_job(idle_timeout_s=20))
    mesh.run(5)
    started = mesh.now
    mesh.run(60, until=lambda: bool(mesh.effects(StopContainer, "B")))
    assert mesh.now - started <= 20
    assert mesh.work("B").detail == "idle for 20 s"
    mesh.run_job()
    assert mesh.job().state == "done"
    # B claims 61 s, but the requester saw the session last some 20 s: one started minute.
    assert _pay_amounts(mesh) == [2]


def test_service_flow_budget_ends_the_session() -> None:
    mesh = _service_mesh(claimed_s=400)
    mesh.submit("A", _service_job(idle_timeout_s=86_400))
    mesh.run(5)
    assert _ask(mesh, "A", 1).ok  # held open: only the budget (5 minutes at 2) ends it
    mesh.run(400, until=lambda: bool(mesh.effects(StopContainer, "B")))
    assert mesh.work("B").detail == "the budget's minutes are used"
    mesh.run_job()
    assert mesh.job().state == "done" and _pay_amounts(mesh) == [10]


def test_service_declined_by_a_worker_that_cannot_forward() -> None:
    mesh = _service_mesh(refusal="needs root")
    mesh.submit("A", _service_job())
    mesh.run(5)
    assert JOB_ID not in mesh.node("B").provider.jobs
    why = mesh.node("B").provider.last_decision[JOB_ID]
    assert why == "cannot run service jobs here: needs root"
    # A batch job still gets a bid from the same worker.
    mesh.submit("A", make_job(redundancy=1, max_price=2, budget=10), job_id="0" * 31 + "2")
    mesh.run(3)
    assert "0" * 31 + "2" in mesh.node("B").provider.jobs


def test_service_transitions_are_in_the_spec_tables() -> None:
    """Every state change the service flows above make is a row of PROTOCOL.md §7.7 / §7.8."""
    flow._SEEN = set()
    try:
        test_service_flow_cancel_pays_started_minutes()
        test_service_flow_idle_session_ends_by_itself()
        test_service_flow_budget_ends_the_session()
        seen = flow._SEEN
    finally:
        flow._SEEN = None
    assert not flow._undocumented(seen)
    assert ("requester", "fetching", "outputs fetched", "done") in seen


def test_service_vectors_in_protocol_md() -> None:
    from p2pmesh.core import codec

    doc = (flow.ROOT / "docs/PROTOCOL.md").read_text(encoding="utf-8")
    jid = "00112233445566778899aabbccddeeff"
    for value in (
        {"idle_timeout_s": 600, "port": 8080},
        {"job_id": jid, "probe": False},
        {"job_id": jid, "probe": True},
        {"error": "not the requester of this job: only it may connect", "ok": False},
    ):
        assert codec.encode(value).hex() in doc, value
    small = {
        "schema_version": 1,
        "name": "n",
        "image": "p2pmesh/busybox:1",
        "command": ["true"],
        "max_price": 1,
        "budget": 2,
        "service": {"port": 8080},
    }
    assert job_digest(parse_job(small)) in doc


def test_service_connect_listens_on_loopback_only() -> None:
    from p2pmesh.daemon.service import ServiceError, _listen_addr

    assert _listen_addr("127.0.0.1:8888") == ("127.0.0.1", 8888)
    assert _listen_addr("[::1]:0") == ("::1", 0)
    for bad, why in (
        ("0.0.0.0:8888", "must be a loopback address"),
        ("192.0.2.1:80", "must be a loopback address"),
        ("localhost:80", "needs an IP address"),
        ("127.0.0.1", "takes HOST:PORT"),
        ("127.0.0.1:99999", "takes HOST:PORT"),
    ):
        with pytest.raises(ServiceError, match=why):
            _listen_addr(bad)


def test_service_jupyter_example_is_a_valid_service_job() -> None:
    from p2pmesh.jobfile import load_job_file

    spec = load_job_file(flow.ROOT / "examples/jupyter/notebook.json")[0]
    assert spec.service == svc.ServiceSpec(8888, 900) and spec.redundancy == 1
    assert spec.network == "none" and spec.budget // spec.max_price == 60  # an hour
