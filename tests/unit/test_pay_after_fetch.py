"""Nothing is paid for nothing (PROTOCOL.md §8.1, §9.2): the order verdict → payment follows
the outputs, fetched and verified from every agreeing worker, through real ``Node``s.

The router is ``test_auction_flow.Mesh``; ``HoldingMesh`` can also hold output fetches back
(transfers under way) and answer them later, so the state *between* majority and verified
outputs can be looked at, and the requester restarted in it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from p2pmesh.core.auction import requester as requester_mod
from p2pmesh.core.effects import Effect, FetchOutputs
from p2pmesh.core.events import OutputsFetched
from p2pmesh.core.node import Node, NodeConfig
from unit.test_auction_flow import Mesh, Script, _digest, _verdicts, make_job


@dataclass
class HoldingMesh(Mesh):
    hold: bool = False  # output fetches wait in ``held`` until ``release``
    held: list[tuple[str, FetchOutputs]] = field(default_factory=list)

    def _perform(self, src: str, eff: Effect) -> None:
        if isinstance(eff, FetchOutputs) and self.hold:
            self.held.append((src, eff))
            return
        super()._perform(src, eff)

    def release(self) -> None:
        self.hold = False
        held, self.held = self.held, []
        for src, eff in held:
            ok = self.names[eff.worker] not in self.fail_outputs
            self.queue.append(
                (src, OutputsFetched(eff.job_id, eff.worker, ok, "" if ok else "refused"))
            )
        self.settle()


def paid(mesh: Mesh) -> list[str]:
    return sorted(mesh.names[e.peer_id] for _, _, e in mesh.sent("pay", src="A"))


def proposals(node: Node) -> list[Any]:
    return [b for b in node.ledger.ledger.chains.get(node.peer_id, []) if b.kind == "proposal"]


def account(mesh: Mesh, name: str = "A") -> dict[str, Any]:
    return mesh.node("A").ledger.balance_json(mesh.ids[name])


def test_no_verdict_no_evidence_and_no_payment_before_the_outputs_are_here() -> None:
    mesh = HoldingMesh(hold=True)
    mesh.submit("A", make_job())
    mesh.run(30, until=lambda: bool(mesh.held) and len(mesh.held) == 2)
    j = mesh.job()
    assert j.state == "fetching" and sorted(mesh.names[e.worker] for _, e in mesh.held) == [
        "B",
        "C",
    ]
    assert not mesh.sent("pay") and not _verdicts(mesh) and not j.verdict_raw
    book = mesh.node("A").requester.book
    assert all(book.explain(mesh.ids[w], mesh.now)["checks_passed"] == 0 for w in "BC")
    # One copy is here: still nothing, the other payee has not served yet.
    src, first = mesh.held.pop(0)
    mesh.queue.append((src, OutputsFetched(first.job_id, first.worker, True)))
    mesh.settle()
    assert mesh.job().state == "fetching" and not mesh.sent("pay") and not _verdicts(mesh)
    mesh.release()
    assert mesh.job().state == "done"
    assert paid(mesh) == ["B", "C"]
    [v] = _verdicts(mesh)
    assert v.outcome == "accepted" and v.at == j.decided_at


def test_redundancy_one_withholder_is_lost_and_nothing_is_paid() -> None:
    mesh = Mesh(prices=(3, 1))
    mesh.fail_outputs = {"B"}
    mesh.submit("A", make_job(redundancy=1, budget=10, deadline_s=120))
    mesh.run_job()
    j = mesh.job()
    assert j.state == "timeout", j.history
    assert mesh.workers() == {"B": "lost"}
    assert j.replicas[mesh.ids["B"]].lost_reason == "outputs could not be fetched: refused"
    assert not mesh.sent("pay") and not _verdicts(mesh)
    a = account(mesh)
    assert (a["spent"], a["pending"]) == (0, 0)
    # Counted against it, as a no-show.
    assert mesh.node("A").requester.book.explain(mesh.ids["B"], mesh.now)["reputation"] < 0.1


def test_redundancy_one_withholder_is_replaced_by_a_worker_that_serves() -> None:
    mesh = Mesh(prices=(3, 1, 2))
    mesh.fail_outputs = {"B"}
    mesh.submit("A", make_job(redundancy=1, budget=10))
    mesh.run_job()
    assert mesh.job().state == "done"
    assert mesh.workers() == {"B": "lost", "C": "reported"}
    assert paid(mesh) == ["C"]


def test_auto_alone_withholder_is_replaced_and_unpaid() -> None:
    # "auto" with a budget for one worker runs alone (requester._auto_k).
    mesh = Mesh(prices=(3, 9, 10))
    mesh.fail_outputs = {"B"}
    mesh.submit("A", make_job(redundancy="auto", max_price=10, budget=15))
    mesh.run_job()
    j = mesh.job()
    assert j.state == "done" and j.k == 1, j.history
    assert mesh.workers() == {"B": "lost", "C": "reported"}
    assert paid(mesh) == ["C"]
    [v] = _verdicts(mesh)
    assert [mesh.names[w] for w in v.agreeing] == ["C"]


def test_redundancy_three_withholder_is_replaced_from_the_spare_bids_and_unpaid() -> None:
    # Every replica is heard before deciding (unanimity, PROTOCOL.md §8.1), so the slow D
    # reports too. C then does not serve: B and D are two of the three in play, one short of
    # the job's three, so the spare bid E replaces C; all three agree and are paid.
    mesh = Mesh(prices=(3, 1, 2, 3, 4))
    mesh.scripts = {"D": Script(run_s=20)}
    mesh.fail_outputs = {"C"}
    mesh.submit("A", make_job(redundancy=3, budget=30))
    mesh.run_job()
    j = mesh.job()
    assert j.state == "done", j.history
    assert mesh.workers() == {"B": "reported", "C": "lost", "D": "reported", "E": "reported"}
    assert paid(mesh) == ["B", "D", "E"]
    [v] = _verdicts(mesh)
    assert sorted(mesh.names[w] for w in v.agreeing) == ["B", "D", "E"] and not v.dissenting


def test_numeric_outputs_fetched_for_the_comparison_are_not_fetched_again() -> None:
    mesh = Mesh()
    mesh.scripts = {
        "B": Script(output_digest=_digest(b"1.0000001"), numeric_key="pi"),
        "C": Script(output_digest=_digest(b"1.0000002"), numeric_key="pi"),
    }
    mesh.submit("A", make_job(validation={"mode": "numeric", "rel_tol": 1e-6}))
    mesh.run_job()
    assert mesh.job().state == "done"
    assert sorted(mesh.names[f.worker] for f in mesh.effects(FetchOutputs, "A")) == ["B", "C"]
    assert paid(mesh) == ["B", "C"]


def test_numeric_withholder_is_lost_before_the_comparison_and_replaced() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.scripts = {
        w: Script(output_digest=_digest(w.encode()), numeric_key="pi") for w in ("B", "C", "D")
    }
    mesh.fail_outputs = {"B"}
    mesh.submit("A", make_job(validation={"mode": "numeric", "rel_tol": 1e-6}))
    mesh.run_job()
    assert mesh.job().state == "done", mesh.job().history
    assert mesh.workers() == {"B": "lost", "C": "reported", "D": "reported"}
    assert paid(mesh) == ["C", "D"]


def test_a_failed_outcome_pays_nobody_and_is_not_retried_for_an_unserved_log() -> None:
    mesh = Mesh()
    mesh.scripts = {w: Script(exit_code=3) for w in "BC"}
    mesh.submit("A", make_job())
    mesh.run_job()
    assert mesh.job().state == "failed" and not mesh.sent("pay")
    [v] = _verdicts(mesh)
    assert v.outcome == "failed"


def test_requester_restart_while_fetching_fetches_again_and_pays_once() -> None:
    mesh = HoldingMesh(hold=True)
    mesh.submit("A", make_job())
    mesh.run(30, until=lambda: len(mesh.held) == 2)
    assert mesh.job().state == "fetching"
    mesh.held.clear()  # the transfers die with the process
    mesh.restart("A")
    mesh.hold = False
    mesh.run_job()
    assert mesh.job().state == "done"
    assert paid(mesh) == ["B", "C"]
    assert len(proposals(mesh.node("A"))) == 2


def test_a_crash_between_payment_and_job_record_pays_once_with_the_same_verdict() -> None:
    # The daemon writes blocks and pending payments at once, job records a little later: a
    # crash in between comes back with the payments made and the job still "fetching".
    mesh = HoldingMesh(hold=True)
    mesh.submit("A", make_job())
    mesh.run(30, until=lambda: len(mesh.held) == 2)
    stale = json.loads(json.dumps(requester_mod.to_doc(mesh.job())))
    mesh.release()
    old = mesh.node("A")
    assert mesh.job().state == "done" and len(proposals(old)) == 2
    first_verdict = mesh.job().verdict_raw

    node = Node(NodeConfig(), old.signer, old.caps, started_at=float(mesh.now))
    blocks = [b.raw for chain in old.ledger.ledger.chains.values() for b in chain]
    pending = [v for (t, _), v in mesh.db["A"].items() if t == "payments" and v is not None]
    node.ledger.restore(blocks, [], pending)
    j = requester_mod.from_doc(stale, node.peer_id, mesh.now)
    assert j.state == "fetching"
    node.requester.jobs[j.job_id] = j
    mesh.nodes["A"] = node
    mesh.run_job()
    again = mesh.job()
    assert again.state == "done"
    assert again.verdict_raw == first_verdict  # the very bytes the proposals name
    assert len(proposals(node)) == 2
    assert account(mesh)["payments_out"] == 2


def test_a_wrong_answer_that_is_not_served_still_counts_as_a_dissent() -> None:
    # B answers wrong and refuses the fetch: lost at once, and still a dissenter in the verdict
    # (not only the lighter no-show), so refusing cannot hide a wrong answer.
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.scripts = {"B": Script(output_digest=_digest(b"wrong"))}
    mesh.fail_outputs = {"B"}
    mesh.submit("A", make_job())
    mesh.run_job()
    assert mesh.job().state == "done"
    assert mesh.workers() == {"B": "lost", "C": "reported", "D": "reported"}
    [v] = _verdicts(mesh)
    assert [mesh.names[w] for w in v.dissenting] == ["B"]
    assert sorted(mesh.names[w] for w in v.agreeing) == ["C", "D"]
    kinds = {
        e["kind"]
        for e in mesh.node("A").requester.book.explain(mesh.ids["B"], mesh.now)["evidence"]
    }
    assert kinds == {"no-show", "dissented"}
    assert paid(mesh) == ["C", "D"]


def test_a_right_answer_that_is_not_served_is_no_dissent() -> None:
    mesh = Mesh(prices=(3, 1, 2, 3))
    mesh.fail_outputs = {"B"}
    mesh.submit("A", make_job())
    mesh.run_job()
    [v] = _verdicts(mesh)
    assert not v.dissenting and mesh.ids["B"] not in v.agreeing
