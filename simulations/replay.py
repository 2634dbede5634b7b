"""Replays: an explicit list of peers and of jobs at explicit times, run in the simulator.

The named scenarios (scenarios.py) draw jobs from templates at Poisson times. To hold the
simulator against real daemons (``tests/integration/test_sim_agreement.py``) both must run the
*same* jobs, so here:

* ``wire_job(path)`` reads a real job file as ``p2pmesh offer`` does (``load_job_file``) and
  addresses its inputs by content exactly as the daemon's blob store does, giving the very
  ``WireJob`` a daemon would offer;
* ``scripted_job`` adds what the model needs and a job file cannot say (how long an honest run
  takes, how big the output is) and when, and by which peer, the job is submitted;
* ``run_script`` runs a ``Plan`` whose ``script`` holds those jobs, then lets the payments that
  follow the last verdicts settle, as a user waits for ``p2pmesh balance`` to show them;
* ``Replay`` reads the outcome through the views the daemon's control handlers use
  (``Node.job``, ``Node.reputation``, ``Node.balances``), so both sides can be compared on the
  same documents.

Nothing here decides anything the protocol decides: every award, verdict, reputation change and
payment is the real core's reaction, driven by ``SimPeer`` as in any other run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pmesh import packing
from p2pmesh.core.jobspec import MAX_INPUT_BYTES, InputRef, WireJob
from p2pmesh.core.node import Node
from p2pmesh.jobfile import load_job_file
from p2pmesh.simulations.behaviours import HONEST, Behaviour
from p2pmesh.simulations.metrics import Report, report
from p2pmesh.simulations.network import NetConfig
from p2pmesh.simulations.scenarios import make_simulation
from p2pmesh.simulations.sim import Plan, Simulation
from p2pmesh.simulations.workloads import ScriptedJob, Template

RUN_SIGMA = 0.2  # spread of a scripted job's intrinsic run time around ``run_s``
SETTLE_S = 120.0  # at most this long (virtual) after the last job for payments to settle


def wire_job(path: Path) -> WireJob:
    """The ``WireJob`` the daemon builds from this job file (``JobRunner.submit``)."""
    spec, paths = load_job_file(Path(path))
    refs: dict[str, InputRef] = {}
    for name, target in sorted(paths.items()):
        if target.is_dir():
            data = packing.pack_dir(target, max_bytes=MAX_INPUT_BYTES)
            refs[name] = InputRef(packing.digest(data), len(data), "dir")
        else:
            h = hashlib.sha256()
            size = 0
            with open(target, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
            refs[name] = InputRef("sha256:" + h.hexdigest(), size, "file")
    return WireJob(spec, refs)


def scripted_job(
    path: Path, *, at: float, requester: int, run_s: float, output_bytes: int = 10_000
) -> ScriptedJob:
    """Job file ``path``, submitted by peer ``requester`` at ``at`` seconds after the warm-up;
    an honest run takes about ``run_s`` seconds (log-normal, σ ``RUN_SIGMA``)."""
    job = wire_job(path)
    spec = job.spec
    template = Template(
        name=spec.name,
        doc=json.loads(Path(path).read_text()),
        inputs={name: ref.size for name, ref in job.input_refs.items()},
        run_s=run_s,
        run_sigma=RUN_SIGMA,
        output_bytes=output_bytes,
        numeric=spec.validation.mode == "numeric",
    )
    return ScriptedJob(at=at, requester=requester, template=template, job=job)


def script_plan(
    name: str,
    behaviours: Sequence[Behaviour],
    script: Sequence[ScriptedJob],
    *,
    seed: int = 1,
    net: NetConfig | None = None,
    node: dict[str, Any] | None = None,
) -> Plan:
    """A plan that runs exactly ``script`` on peers ``behaviours`` (no churn, no hooks).
    ``node``: ``NodeConfig`` fields every node gets, as the daemons' flags would."""
    if not script:
        raise ValueError("a script needs at least one job")
    for job in script:
        if not 0 <= job.requester < len(behaviours):
            raise ValueError(f"requester {job.requester} is not a peer of the script")
    return Plan(
        name=name,
        seed=seed,
        jobs=len(script),
        behaviours=list(behaviours),
        churn=[None] * len(behaviours),
        net=net or NetConfig(),
        rate=1.0,  # unused: the script says when jobs arrive
        script=tuple(sorted(script, key=lambda j: j.at)),
        node=dict(node or {}),
    )


@dataclass(slots=True)
class Replay:
    """A finished scripted run. ``job_ids[n]`` is the n-th job of the script (by time)."""

    sim: Simulation
    report: Report
    job_ids: list[str]

    @property
    def now(self) -> float:
        return self.sim.engine.now

    def peer_id(self, i: int) -> str:
        return self.sim.peers[i].peer_id

    def node(self, i: int) -> Node:
        node = self.sim.peers[i].node
        assert node is not None, f"peer {i} never came online"
        return node

    def job(self, n: int) -> dict[str, Any]:
        """The n-th job's document at its requester: what ``p2pmesh job ID --json`` shows."""
        job_id = self.job_ids[n]
        meta = self.sim.jobs[job_id]
        doc = self.node(meta.requester).job(job_id)
        assert doc is not None and doc["role"] == "requester", job_id
        return doc

    def accepted_honest(self, n: int) -> bool | None:
        """Model fact: did the n-th job accept the right answer? None when nothing was."""
        doc = self.job(n)
        if not doc["output_digest"]:
            return None
        return self.sim.value_of(doc["output_digest"]) == HONEST

    def reputation(self, observer: int, peers: Sequence[int]) -> dict[str, dict[str, Any]]:
        """``p2pmesh reputation PEER --json`` on ``observer`` for each of ``peers``, by ID."""
        node = self.node(observer)
        return {self.peer_id(i): node.explain_reputation(self.peer_id(i), self.now) for i in peers}

    def balances(self, observer: int) -> dict[str, dict[str, Any]]:
        """The ``balances`` of ``p2pmesh ledger --json`` on ``observer``."""
        return self.node(observer).balances()


def run_script(
    name: str,
    behaviours: Sequence[Behaviour],
    script: Sequence[ScriptedJob],
    *,
    seed: int = 1,
    net: NetConfig | None = None,
    settle_s: float = SETTLE_S,
    node: dict[str, Any] | None = None,
) -> Replay:
    """Run ``script`` on ``behaviours`` until every job is final and no payment is pending
    (or ``settle_s`` more virtual seconds have passed), and return the outcome."""
    sim = make_simulation(script_plan(name, behaviours, script, seed=seed, net=net, node=node))
    sim.run()
    # The run stops at the last final state; the payments its verdict started (a proposal to
    # each agreeing worker, their agreements back) are still on their way. Go on until they
    # have settled, one tick at a time.
    engine = sim.engine
    limit = engine.now + settle_s
    while engine.now < limit and any(p.node and p.node.pending_payments() for p in sim.peers):
        engine.run_until(engine.now + 1.0)
    return Replay(sim, report(sim), list(sim.jobs))


__all__ = ["Replay", "run_script", "script_plan", "scripted_job", "wire_job"]
