"""Why is my job waiting (issue 16 item 2): the fit rules and their reasons, the no-bid summary
from the requester's peer table, the phases a job goes through, and workers' decline counters."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from p2pmesh.core.auction import requester as requester_mod
from p2pmesh.core.auction.strategies import BidContext, decide_bid, job_fits
from p2pmesh.core.capability import Gpu, build_record, misfit
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.effects import SendMessage
from p2pmesh.core.events import ImageProgress, RecordReceived, Ticked
from p2pmesh.core.membership import no_bids_text, summarize_fit
from tests.unit.test_auction_flow import JOB_ID, T0, Mesh, Script, caps_for, make_job

GPU_JOB = {"resources": {"gpus": 1, "gpu_memory_gb": 16}}
BIG = Gpu("big", 40_960, "d", "9.0")
SMALL = Gpu("small", 8192, "d", "8.6")


# -- the fit rules: every reason ------------------------------------------------------------------
FIT_CASES: dict[str, tuple[dict[str, Any], dict[str, Any], bool | None, str, str, str]] = {
    # name: (job fields, capability changes, network allowed, kind, worker's reason, "1 peer …")
    "work off": ({}, {"work": False}, None, "work", "work is disabled on this node",
                 "does not take work"),
    "no docker": ({}, {"executors": ()}, None, "executor", "no working executor (Docker)",
                  "has no Docker"),
    "image": ({"image": "python:3.12"}, {}, None, "image", "image not allowed: python:3.12",
              "does not allow image python:3.12"),
    "image, no list": ({"image": "python:3.12"}, {"allow_images": ()}, None, "image",
                       "image not allowed: python:3.12 (no --allow-image given)",
                       "does not allow image python:3.12"),
    "network": ({"network": "bridge"}, {}, False, "network",
                "job asks for network access, not allowed here", "does not allow network access"),
    "cpus": ({"resources": {"cpus": 16}}, {}, None, "cpus", "needs 16 CPUs, have 8",
             "has fewer than 16 CPUs"),
    "ram": ({"resources": {"ram_gb": 32}}, {}, None, "ram", "needs 32768 MiB RAM, have 16384",
            "has less than 32768 MiB RAM"),
    "disk": ({"resources": {"disk_gb": 200}}, {}, None, "disk",
             "needs 204800 MiB disk, have 100000 free", "has less than 204800 MiB disk free"),
    "gpu": (GPU_JOB, {}, None, "gpu", "needs 1 GPUs, have 0", "lacks a GPU"),
    "gpus": ({"resources": {"gpus": 2}}, {"gpus": (BIG,)}, None, "gpu", "needs 2 GPUs, have 1",
             "lacks 2 GPUs"),
    "gpu memory": (GPU_JOB, {"gpus": (SMALL,)}, None, "gpu_memory",
                   "needs 1 GPUs with 16384 MiB each",
                   "has too little GPU memory (16384 MiB needed)"),
    "price": ({"max_price": 2}, {}, None, "price", "price 3 above max_price 2",
              "asks more than max_price 2"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FIT_CASES))
def test_misfit_names_the_first_rule_a_node_fails(case: str) -> None:
    job_over, caps_over, net, kind, reason, one = FIT_CASES[case]
    spec = make_job(**job_over).spec
    caps = caps_for(1, **caps_over)
    why = misfit(spec, caps, network_allowed=net)
    assert why is not None
    assert (why.kind, why.reason, why.one) == (kind, reason, one)
    assert why.phrase(1) == f"1 {one}" and why.phrase(3).startswith("3 ")
    # The worker's own check is the same rule, word for word (PROTOCOL.md §7.2).
    assert job_fits(caps, spec, network_allowed=net) == reason


def test_a_node_that_fits_has_no_misfit_and_network_is_not_held_against_a_record() -> None:
    assert misfit(make_job().spec, caps_for(1)) is None
    gpu = make_job(**GPU_JOB).spec
    assert misfit(gpu, caps_for(1, gpus=(BIG,))) is None
    networked = make_job(network="bridge").spec
    assert misfit(networked, caps_for(1), network_allowed=None) is None  # a record: unknown
    assert misfit(networked, caps_for(1), network_allowed=True) is None


def test_the_first_failing_rule_decides() -> None:
    spec = make_job(image="python:3.12", **GPU_JOB).spec
    why = misfit(spec, caps_for(1, executors=()))
    assert why is not None and why.kind == "executor"
    why = misfit(spec, caps_for(1))
    assert why is not None and why.kind == "image"


# -- the no-bid summary ---------------------------------------------------------------------------
def test_no_bid_summary_counts_each_peers_first_reason_most_first() -> None:
    spec = make_job(image="python:3.12", **GPU_JOB).spec
    lacks_gpu = [caps_for(i, allow_images=("*",)) for i in range(5)]
    no_image = [caps_for(i, gpus=(BIG,)) for i in range(2)]
    summary = summarize_fit(no_image + lacks_gpu, spec)
    assert summary == {
        "known": 7,
        "fit": 0,
        "reasons": {"lack a GPU": 5, "do not allow image python:3.12": 2},
    }
    assert no_bids_text(summary) == (
        "no bids yet: 7 peers known, 0 fit (5 lack a GPU, 2 do not allow image python:3.12)"
    )


def test_no_bid_summary_singular_fitting_tried_and_empty() -> None:
    spec = make_job(**GPU_JOB).spec
    peers = [caps_for(1), caps_for(2, gpus=(BIG,)), caps_for(3, gpus=(BIG,))]
    summary = summarize_fit(peers, spec, tried=[False, True, False])
    assert summary["fit"] == 1
    assert no_bids_text(summary) == (
        "no bids yet: 3 peers known, 1 fit (1 lacks a GPU, 1 was already tried)"
    )
    assert no_bids_text(summarize_fit([], spec)) == "no bids yet: 0 peers known, 0 fit"
    one = summarize_fit([caps_for(1, gpus=(BIG,))], spec)
    assert no_bids_text(one) == "no bids yet: 1 peer known, 1 fit"


# -- phases, through real nodes in virtual time ---------------------------------------------------
def known_mesh(cls: type[Mesh] = Mesh, **kw: Any) -> Mesh:
    """A ``Mesh`` whose nodes hold each other's capability records (the requester's table)."""
    mesh = cls(**kw)
    for node in mesh.nodes.values():
        node.handle(Ticked(), float(mesh.now))  # the first tick signs the node's own record
    for name, node in mesh.nodes.items():
        for other, peer in mesh.nodes.items():
            if other != name:
                assert peer.own is not None
                node.handle(RecordReceived(peer.own.raw, "gossip"), float(mesh.now))
    return mesh


def learn(node: Any, caps: Any, seed: int) -> None:
    """``node`` receives the record of a peer that is not in the mesh (it never bids)."""
    rec = build_record(Ed25519Signer(bytes([seed]) * 32), caps, seq=1, now=T0, ttl_s=3600)
    node.handle(RecordReceived(rec.raw, "gossip"), float(T0))


def phase(mesh: Mesh, name: str = "A") -> dict[str, Any]:
    doc = mesh.node(name).job(JOB_ID, now=float(mesh.now))
    assert doc is not None
    return doc["phase"]


def test_a_job_nobody_fits_says_why_from_the_peer_table() -> None:
    mesh = known_mesh()  # B and C allow p2pmesh/* only
    for i in range(3):  # three more that allow any image but have no GPU
        learn(mesh.node("A"), caps_for(10 + i, allow_images=("*",)), 40 + i)
    mesh.submit("A", make_job(image="python:3.12", deadline_s=120, **GPU_JOB))
    doc = mesh.node("A").job(JOB_ID, now=float(mesh.now))
    assert doc is not None and doc["phase"]["name"] == "offered"
    text = "no bids yet: 5 peers known, 0 fit (3 lack a GPU, 2 do not allow image python:3.12)"
    assert doc["waiting"] == {
        "known": 5,
        "fit": 0,
        "reasons": {"lack a GPU": 3, "do not allow image python:3.12": 2},
        "text": text,
    }
    assert doc["phase"]["text"] == doc["waiting"]["text"]
    # A list of jobs does not walk the peer table for each one: the reasons are in ``job``.
    [listed] = [d for d in mesh.node("A").jobs(float(mesh.now)) if d["role"] == "requester"]
    assert listed["phase"] == {"name": "offered", "text": "offered (round 0), no bids yet",
                               "since": None} and "waiting" not in listed  # fmt: skip
    mesh.run(121)
    doc = mesh.node("A").job(JOB_ID, now=float(mesh.now))
    assert doc is not None and doc["state"] == "no-bids" and "waiting" not in doc
    assert doc["phase"]["name"] == "no-bids" and "no peer bid" in doc["phase"]["text"]


def test_phases_of_a_job_that_runs_bidding_awarded_inputs_running_paying_done() -> None:
    mesh = known_mesh()
    mesh.scripts = {"B": Script(run_s=10, inputs_hang=True), "C": Script(run_s=10)}
    # A third peer fits but never bids, so the requester waits out the bid window.
    learn(mesh.node("A"), caps_for(12), 50)
    mesh.submit("A", make_job(redundancy=2, timeout_s=60))
    p = phase(mesh)
    assert p["name"] == "bidding" and p["text"] == "bidding: 2 bid(s), awarding in 2 s"
    mesh.run(2)  # the window ends: both awarded; C runs, B is stuck fetching its inputs
    assert mesh.workers() == {"B": "accepted", "C": "running"}
    doc = mesh.node("A").job(JOB_ID, now=float(mesh.now))
    assert doc is not None
    by_worker = {mesh.names[w["peer_id"]]: w["phase"] for w in doc["workers"]}
    assert by_worker == {"B": "fetching inputs", "C": "running"}
    started = mesh.now
    mesh.run(3)
    p = phase(mesh)
    assert p["name"] == "running" and p["since"] == started and p["elapsed_s"] == 3
    assert p["text"] == "running 3 s of 60 s timeout" and p["timeout_s"] == 60
    # Stored documents (result.json) carry no clock: no elapsed time.
    stored = requester_mod.job_view(mesh.job())["phase"]
    assert stored["name"] == "running" and "elapsed_s" not in stored

    # Only B is left, fetching inputs (C reported).
    mesh.run(10)
    assert mesh.workers()["C"] == "reported"
    p = phase(mesh)
    assert p["name"] == "fetching inputs" and p["text"] == "fetching inputs; 1 of 2 reported"


def test_phase_awarded_while_the_worker_has_not_accepted() -> None:
    mesh = known_mesh()
    learn(mesh.node("A"), caps_for(12), 50)  # fits, never bids: the window is waited out
    mesh.submit("A", make_job(redundancy=1, budget=10))  # both bid at once
    mesh.muted |= {"B", "C"}  # and then go quiet: the award is never accepted
    mesh.run(2)
    p = phase(mesh)
    assert mesh.job().state == "awarded"
    assert p["name"] == "awarded" and p["text"] == "awarded, waiting for the worker"
    assert p["since"] == T0 + 2


class LossyPay(Mesh):
    """Payment proposals are lost on the way while ``drop_pay`` is set."""

    drop_pay: bool = True

    def _perform(self, src: str, eff: Any) -> None:
        if self.drop_pay and isinstance(eff, SendMessage) and eff.kind == "pay":
            return
        super()._perform(src, eff)


def test_phase_paying_until_the_payee_agrees_then_done() -> None:
    mesh = known_mesh(cls=LossyPay)
    assert isinstance(mesh, LossyPay)
    mesh.submit("A", make_job(redundancy=1, budget=10))
    mesh.run(30, until=lambda: mesh.job().state == "done")
    assert mesh.job().state == "done"
    p = phase(mesh)
    assert p["name"] == "paying" and p["text"] == "paying: 1 payment(s) not yet agreed"
    mesh.drop_pay = False  # the ledger resends the proposal; this time it arrives
    mesh.run(60, until=lambda: phase(mesh)["name"] == "done")
    assert phase(mesh) == {"name": "done", "text": "done", "since": mesh.job().finished_at}


def test_phase_sending_outputs_and_validating_from_the_jobs_own_state() -> None:
    mesh = known_mesh()
    mesh.submit("A", make_job(redundancy=2))
    mesh.run_job()
    j = mesh.job()
    w1, w2 = sorted(j.replicas)
    # What the requester holds while it fetches the agreeing workers' outputs (§8.1).
    j.state, j.error, j.fetched, j.fetching = "fetching", "", {w1}, {w2}
    p = requester_mod.job_phase(j, mesh.now)
    assert p["name"] == "sending outputs" and p["text"] == "sending outputs (1 of 2 served)"
    view = requester_mod.job_view(j, mesh.now)
    assert {w["phase"] for w in view["workers"]} == {"reported", "sending outputs"}
    # Numeric validation: outputs fetched, the comparison under way.
    j.state, j.fetching, j.fetched, j.compared = "validating", set(), {w1, w2}, (w1, w2)
    p = requester_mod.job_phase(j, mesh.now)
    assert p == {"name": "validating", "text": "validating 2 results", "since": None}
    assert set(requester_mod.PHASES) >= {"offered", "bidding", "awarded", "paying"}


def test_running_since_survives_a_restart_of_the_requester() -> None:
    mesh = known_mesh()
    mesh.scripts = {"B": Script(run_s=50), "C": Script(run_s=50)}
    mesh.submit("A", make_job(redundancy=2, timeout_s=60))
    mesh.run(5)
    since = phase(mesh)["since"]
    mesh.restart("A")
    mesh.run(1)
    p = phase(mesh)
    assert p["name"] == "running" and p["since"] == since


# -- workers: declines by reason ----------------------------------------------------------------
def test_worker_counts_declines_by_reason_once_per_offer_and_not_its_own() -> None:
    mesh = known_mesh()
    mesh.submit("A", make_job(image="python:3.12", deadline_s=200))
    mesh.run(40)  # published again meanwhile: counted once
    for w in ("B", "C"):
        assert mesh.node(w).provider.declines == {"image not allowed": 1}
        assert mesh.node(w).node_json(float(mesh.now))["declines"] == {"image not allowed": 1}
    assert mesh.node("A").provider.declines == {}  # its own offer
    logs = [
        e
        for _, n, e in mesh.done
        if n == "B" and getattr(e, "msg", "") == "not bidding" and e.level == "info"
    ]
    assert len(logs) == 1, logs
    assert logs[0].fields["reason"] == "image not allowed: python:3.12"


def test_decline_kinds_name_the_resource() -> None:
    from p2pmesh.core.auction import messages as m

    job = make_job(**GPU_JOB)
    signer = Ed25519Signer(bytes([5]) * 32)
    offer = m.build_offer(
        signer,
        job_id=JOB_ID,
        job=job,
        created_at=T0,
        deadline_at=T0 + 300,
        bid_window_s=2,
        round_=0,
        addrs=(),
        exclude=(),
    )
    ctx = BidContext("me", caps_for(1), 0, False, T0)
    d = decide_bid(offer, ctx)
    assert (d.bid, d.kind, d.reason) == (False, "too few GPUs", "needs 1 GPUs, have 0")
    busy = decide_bid(offer, replace(ctx, caps=caps_for(1, gpus=(BIG,)), active_jobs=2))
    assert (busy.bid, busy.kind) == (False, "busy")
    ok = decide_bid(offer, replace(ctx, caps=caps_for(1, gpus=(BIG,))))
    assert ok.bid and ok.kind == ""


# -- the CLI's words ----------------------------------------------------------------------------
def _render(renderable: Any) -> str:
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def test_progress_view_shows_the_phase_line_and_each_workers_phase() -> None:
    from p2pmesh.cli.jobs import phase_key, phase_text, progress_view

    mesh = known_mesh()
    mesh.scripts = {"B": Script(run_s=30), "C": Script(run_s=30)}
    mesh.submit("A", make_job(redundancy=2, timeout_s=60))
    mesh.run(4)
    doc = mesh.node("A").job(JOB_ID, now=float(mesh.now))
    assert doc is not None
    text = _render(progress_view(doc, time.monotonic()))
    assert "running 4 s of 60 s timeout" in text and text.count("running") >= 3, text
    assert phase_text(doc) == "running 4 s of 60 s timeout"
    mesh.run(1)
    later = mesh.node("A").job(JOB_ID, now=float(mesh.now))
    assert later is not None and phase_text(later) == "running 5 s of 60 s timeout"
    # A ticking clock is no new line for `offer --wait` without a terminal.
    assert phase_key(later) == phase_key(doc)
    # An older daemon's document has no phase: the state stands in for it.
    assert phase_text({"state": "bidding"}) == "bidding"


def test_status_shows_declines_by_reason_most_first() -> None:
    from p2pmesh.cli.views import declines_summary, node_panel

    declines = {"busy": 1, "image not allowed": 3, "too few GPUs": 0}
    assert declines_summary(declines) == "3 image not allowed, 1 busy"
    assert declines_summary(None) == "" and declines_summary({"x": "bad"}) == ""
    text = _render(node_panel({"peer_id": "p", "declines": declines}, float(T0)))
    assert "Not bidding" in text and "3 image not allowed, 1 busy" in text
    assert "Not bidding" not in _render(node_panel({"peer_id": "p"}, float(T0)))


def test_results_that_disagree_look_for_one_more_replica_and_say_who_is_left() -> None:
    mesh = known_mesh()  # B and C only: once both ran, nobody is left to add
    mesh.scripts = {"C": Script(exit_code=1, output_digest="sha256:" + "0" * 64)}
    mesh.submit("A", make_job(deadline_s=200))
    mesh.run(20, until=lambda: mesh.job().k == 3)
    assert mesh.job().k == 3 and mesh.job().state == "awarded", mesh.job().history
    p = phase(mesh)
    assert p["name"] == "offered"
    assert p["text"] == (
        "2 result(s) in; offering replica 3 of 3; "
        "no bids yet: 2 peers known, 0 fit (2 were already tried)"
    )


def test_jobs_table_has_a_phase_column(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    import argparse
    from pathlib import Path

    from p2pmesh.cli import client
    from p2pmesh.cli import jobs as jobs_cli

    mesh = known_mesh()
    mesh.scripts = {"B": Script(inputs_hang=True), "C": Script(inputs_hang=True)}
    mesh.submit("A", make_job(redundancy=2, timeout_s=60))
    docs = mesh.node("A").jobs(float(mesh.now))
    assert [d["state"] for d in docs if d["role"] == "requester"] == ["awarded"]
    monkeypatch.setattr(client, "request", lambda home, cmd, args=None: docs)
    monkeypatch.setenv("COLUMNS", "160")
    assert jobs_cli.cmd_jobs(argparse.Namespace(json=False), Path("/nonexistent")) == 0
    out = capsys.readouterr().out
    assert "phase" in out and "fetching inputs" in out, out


def test_phase_getting_image_from_the_workers_status_detail() -> None:
    mesh = known_mesh()
    mesh.scripts = {"B": Script(run_s=10, inputs_hang=True)}
    mesh.submit("A", make_job(redundancy=1, budget=10))
    mesh.run(2)
    worker = next(n for n in ("B", "C") if mesh.workers().get(n) == "accepted")
    mesh.run(2)  # past the progress rate limit since the "accepted" status
    mesh.deliver(worker, ImageProgress(JOB_ID, "getting image: layer 1 of 2, 3.0 MiB"))
    mesh.settle()
    p = phase(mesh)
    assert p["name"] == "getting image", p
    assert p["text"] == "getting image: layer 1 of 2, 3.0 MiB"
    doc = mesh.node("A").job(JOB_ID, now=float(mesh.now))
    assert doc is not None and [w["phase"] for w in doc["workers"]] == ["getting image"]
    # The image is in: the worker fetches its inputs (its next status says so).
    mesh.deliver(worker, ImageProgress(JOB_ID, "image ready"))
    mesh.settle()
    assert phase(mesh)["name"] == "fetching inputs"
