"""Scripted runs (simulations/replay.py): exactly the given jobs, by the given peers, at the given
times, replayed identically for one seed. The daemon comparison is in
tests/integration/test_sim_agreement.py; this needs no Docker."""

from __future__ import annotations

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
