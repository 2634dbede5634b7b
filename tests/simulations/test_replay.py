"""Scripted runs (simulations/replay.py): exactly the given jobs, by the given peers, at the given
times, replayed identically for one seed. The daemon comparison is in
tests/integration/test_sim_agreement.py; this needs no Docker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pmesh.simulations import behaviours as bh
from p2pmesh.simulations.replay import run_script, script_plan, scripted_job, wire_job
from p2pmesh.simulations.sim import T0, WARMUP_S

WORD_COUNT = Path(__file__).resolve().parents[2] / "examples" / "word-count" / "job.json"


def test_a_script_runs_its_jobs_at_their_times_and_replays() -> None:
    peers = [bh.Behaviour(price=1) for _ in range(3)] + [bh.Behaviour(work=False)]
    script = [scripted_job(WORD_COUNT, at=5.0 * i, requester=3, run_s=0.5) for i in range(3)]
    a = run_script("replay", peers, script, seed=7)
    b = run_script("replay", peers, script, seed=7)
    docs = [a.job(n) for n in range(3)]
    assert [int(d["created_at"] - T0 - WARMUP_S) for d in docs] == [0, 5, 10]
    assert all(d["state"] == "done" and a.accepted_honest(n) for n, d in enumerate(docs))
    assert docs == [b.job(n) for n in range(3)]
    # The requester paid both agreeing replicas of every job, and nothing is left pending.
    me = a.balances(3)[a.peer_id(3)]
    assert (me["spent"], me["pending"], me["payments_out"]) == (6, 0, 6)
    # The very job the daemon would offer: the same spec, inputs addressed by their content.
    assert a.node(3).requester.jobs[a.job_ids[0]].job.digest == wire_job(WORD_COUNT).digest


def test_a_script_names_only_its_own_peers() -> None:
    job = scripted_job(WORD_COUNT, at=0.0, requester=5, run_s=1.0)
    with pytest.raises(ValueError, match="requester 5"):
        script_plan("bad", [bh.Behaviour()], [job])


def _word_count(folder: Path, **changes: object) -> Path:
    """The shipped word-count job with ``changes``, written next to its own input."""
    doc = json.loads(WORD_COUNT.read_text())
    doc.update(changes, inputs={"text.txt": "text.txt"})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.txt").write_text((WORD_COUNT.parent / "data" / "text.txt").read_text())
    (folder / "job.json").write_text(json.dumps(doc))
    return folder / "job.json"


def test_a_withholder_alone_is_never_paid_and_the_job_never_ends_done(tmp_path: Path) -> None:
    # As tests/integration/test_trust.py does with real daemons: the requester and one worker
    # that reports a result and never serves the outputs, redundancy 1.
    path = _word_count(tmp_path / "r1", redundancy=1, deadline_s=120)
    peers = [bh.withholder(), bh.Behaviour(work=False)]
    run = run_script("withhold", peers, [scripted_job(path, at=0.0, requester=1, run_s=0.5)])
    doc = run.job(0)
    assert doc["state"] == "timeout", doc["history"]
    [w] = doc["workers"]
    assert w["state"] == "lost" and w["lost_reason"].startswith("outputs could not be fetched")
    me = run.balances(1).get(run.peer_id(1), {"spent": 0, "pending": 0})
    assert (me["spent"], me["pending"]) == (0, 0)


def test_a_withholder_next_to_honest_workers_is_replaced_and_unpaid(tmp_path: Path) -> None:
    path = _word_count(tmp_path / "r2", redundancy=2)
    # The withholder is the cheapest bidder, so it is awarded first.
    peers = [
        bh.Behaviour(price=2),
        bh.Behaviour(price=2),
        bh.withholder(),
        bh.Behaviour(work=False),
    ]
    peers[2].price = 1
    script = [scripted_job(path, at=5.0 * i, requester=3, run_s=0.5) for i in range(3)]
    run = run_script("withhold2", peers, script)
    assert all(run.job(n)["state"] == "done" and run.accepted_honest(n) for n in range(3))
    books = run.balances(3)
    assert books.get(run.peer_id(2), {"earned": 0})["earned"] == 0
    me = books[run.peer_id(3)]
    assert (me["spent"], me["pending"], me["payments_out"]) == (12, 0, 6)
    first = run.job(0)
    lost = [w for w in first["workers"] if w["peer_id"] == run.peer_id(2)]
    assert lost and lost[0]["lost_reason"].startswith("outputs could not be fetched"), first
