"""The majority rule (core/auction/majority.py, PROTOCOL.md §8.1) as a pure function."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2pmesh.core.auction.majority import (
    AddReplica,
    Decide,
    Inconclusive,
    Rule,
    Vote,
    Wait,
    decide,
)

X = "sha256:" + "1" * 64
Y = "sha256:" + "2" * 64


def ok(worker: str, digest: str = X) -> Vote:
    return Vote(worker, "exited", 0, digest)


def failed(worker: str, code: int = 1) -> Vote:
    return Vote(worker, "exited", code, X)


def pending(worker: str) -> Vote:
    return Vote(worker)


FIXED = Rule(lone_ok=False, max_replicas=5)


def test_two_agreeing_of_two_decide() -> None:
    assert decide([ok("a"), ok("b")], FIXED) == Decide(("a", "b"), (), True, X)


def test_a_lone_result_decides_only_when_one_replica_was_asked_for() -> None:
    assert decide([ok("a")], FIXED) == AddReplica(2)
    assert decide([ok("a")], Rule(lone_ok=True, max_replicas=3)) == Decide(("a",), (), True, X)


def test_no_result_and_pending_results_wait() -> None:
    assert isinstance(decide([], FIXED), Wait)
    assert isinstance(decide([pending("a"), pending("b")], FIXED), Wait)
    # One result of two cannot be a strict majority yet.
    assert decide([ok("a"), pending("b")], FIXED) == Wait("more results may still make a majority")


def test_two_of_three_wait_for_the_third_it_may_be_a_hidden_dissenter() -> None:
    # Unanimity (PROTOCOL.md §8.1): a majority that reports first must not outrun the rest.
    assert isinstance(decide([ok("a"), pending("b"), ok("c")], FIXED), Wait)
    assert decide([ok("a"), ok("b"), ok("c")], FIXED) == Decide(("a", "b", "c"), (), True, X)
    early = Rule(lone_ok=False, max_replicas=5, unanimous=False)
    assert decide([ok("a"), pending("b"), ok("c")], early) == Decide(("a", "c"), (), True, X)


def test_a_rival_answer_needs_to_be_outvoted_by_two() -> None:
    # Two against one: a ring holding two of three replicas would win a plain majority.
    assert decide([ok("a"), ok("b"), ok("c", Y)], FIXED) == AddReplica(4)
    assert decide([ok("a"), ok("b"), ok("c", Y), ok("d", Y)], FIXED) == AddReplica(5)
    three = [ok("a"), ok("b"), ok("c", Y), ok("d"), ok("e")]
    assert decide(three, FIXED) == Decide(("a", "b", "d", "e"), ("c",), True, X)
    # A failed replica is no rival answer: two successes beside it decide.
    assert decide([ok("a"), ok("b"), failed("c")], FIXED) == Decide(("a", "b"), ("c",), True, X)
    plain = Rule(lone_ok=False, max_replicas=5, margin=1)
    assert decide([ok("a"), ok("b"), ok("c", Y)], plain) == Decide(("a", "b"), ("c",), True, X)


def test_disagreement_adds_replicas_up_to_the_limit_then_is_inconclusive() -> None:
    assert decide([ok("a"), ok("b", Y)], FIXED) == AddReplica(3)
    five = [ok("a"), ok("b", Y), failed("c"), failed("d", 2), Vote("e", "timeout", None, X)]
    assert decide(five, FIXED) == Inconclusive((1, 1, 1, 1, 1))


def test_agreeing_failures_decide_a_failed_outcome() -> None:
    d = decide([failed("a", 3), failed("b", 3), ok("c")], FIXED)
    assert d == Decide(("a", "b"), ("c",), False, X)


def test_refusals_agree_only_on_the_same_words() -> None:
    link = "/out/l: symbolic link not allowed (outputs are plain files and folders)"
    fifo = "/out/f: FIFO not allowed (outputs are plain files and folders)"
    same = [Vote(w, "out_refused", 0, X, link) for w in "ab"]
    assert decide(same, FIXED) == Decide(("a", "b"), (), False, X)
    other = [Vote("a", "out_refused", 0, X, link), Vote("b", "out_refused", 0, X, fifo)]
    assert decide(other, FIXED) == AddReplica(3)
    # Other failures' texts vary by host (engine messages); they agree on status and code.
    timeouts = [Vote("a", "timeout", None, X, "killed at 60 s"), Vote("b", "timeout", None, X)]
    assert decide(timeouts, FIXED) == Decide(("a", "b"), (), False, X)


def test_two_equal_groups_are_no_majority() -> None:
    votes = [failed("a"), failed("b"), ok("c"), ok("d"), pending("e")]
    assert isinstance(decide(votes, FIXED), Wait)  # 2 of 5, whatever e says
    votes = [ok("c", Y), ok("d", Y), ok("a"), ok("b")]
    assert decide(votes, Rule(lone_ok=False, max_replicas=9)) == AddReplica(5)


def test_numeric_waits_for_the_comparison_of_exactly_the_successful_set() -> None:
    rule = Rule(lone_ok=False, max_replicas=5, numeric=True)
    votes = [ok("a", X), ok("b", Y)]
    assert decide(votes, rule) == Wait("outputs not compared yet")
    stale = Rule(False, 5, True, compared=("a",), groups=(("a",),))
    assert decide(votes, stale) == Wait("outputs not compared yet")
    asked = Rule(False, 5, True, compared=("a", "b"), groups=None)
    assert decide(votes, asked) == Wait("outputs not compared yet")
    same = Rule(False, 5, True, compared=("a", "b"), groups=(("b", "a"),))
    assert decide(votes, same) == Decide(("a", "b"), (), True, X)
    apart = Rule(False, 5, True, compared=("a", "b"), groups=(("a",), ("b",)))
    assert decide(votes, apart) == AddReplica(3)


def test_numeric_groups_naming_strangers_or_a_worker_twice_are_not_believed() -> None:
    votes = [ok("a", X), ok("b", Y), pending("c")]
    rule = Rule(False, 5, True, compared=("a", "b"), groups=(("a", "z", "q"), ("a", "b")))
    # "z" and "q" are no replicas, "a" is placed once: the groups are (a) and (b).
    assert decide(votes, rule) == Wait("more results may still make a majority")


def test_a_single_numeric_success_needs_no_comparison() -> None:
    rule = Rule(lone_ok=True, max_replicas=3, numeric=True)
    assert decide([ok("a")], rule) == Decide(("a",), (), True, X)


# -- properties ------------------------------------------------------------------------------
_WORKERS = [f"w{i}" for i in range(9)]
_vote = st.builds(
    lambda status, code, digest: (status, code, digest),
    st.sampled_from(["", "exited", "exited", "exited", "timeout", "error"]),
    st.sampled_from([0, 0, 1]),
    st.sampled_from([X, Y]),
)


@st.composite
def ballots(draw: st.DrawFn) -> tuple[list[Vote], Rule]:
    n = draw(st.integers(0, 9))
    votes = []
    for w in _WORKERS[:n]:
        status, code, digest = draw(_vote)
        exit_code = code if status == "exited" else None
        votes.append(Vote(w, status, exit_code, digest) if status else Vote(w))
    numeric = draw(st.booleans())
    rule = Rule(lone_ok=draw(st.booleans()), max_replicas=draw(st.integers(1, 9)))
    if numeric:
        ok_set = tuple(sorted(v.worker for v in votes if v.succeeded))
        # A comparison that found groups of equal value class, for exactly the successful set.
        by_digest: dict[str, list[str]] = {}
        for v in votes:
            if v.succeeded:
                by_digest.setdefault(v.output_digest, []).append(v.worker)
        groups = tuple(tuple(g) for g in by_digest.values())
        rule = Rule(rule.lone_ok, rule.max_replicas, True, ok_set, groups)
    return votes, rule


@given(ballots())
def test_a_decision_is_a_strict_majority_of_one_kind_of_result(ballot: tuple) -> None:
    votes, rule = ballot
    d = decide(votes, rule)
    by = {v.worker: v for v in votes}
    if isinstance(d, Decide):
        assert 2 * len(d.agreeing) > len(votes)
        # Never a lone result unless one replica was asked for.
        assert len(d.agreeing) >= 2 or rule.lone_ok
        members = [by[w] for w in d.agreeing]
        assert all(v.reported for v in members)
        if d.accepted:
            assert all(v.succeeded for v in members)
            if not rule.numeric:
                assert {v.output_digest for v in members} == {d.digest}
        else:
            assert len({(v.status, v.exit_code) for v in members}) == 1
            assert not any(v.succeeded for v in members)
        reported = {v.worker for v in votes if v.reported}
        assert set(d.dissenting) == reported - set(d.agreeing)
        assert list(d.agreeing) == sorted(d.agreeing)
    elif isinstance(d, AddReplica):
        assert all(v.reported for v in votes) and len(votes) < rule.max_replicas
        assert d.replicas == len(votes) + 1
    elif isinstance(d, Inconclusive):
        assert all(v.reported for v in votes) and len(votes) >= rule.max_replicas
        assert sum(d.sizes) == len(votes)
    else:
        assert isinstance(d, Wait)
        assert not votes or not all(v.reported for v in votes)


@given(ballots(), st.randoms())
def test_the_order_of_the_replicas_does_not_matter(ballot: tuple, rnd: object) -> None:
    votes, rule = ballot
    shuffled = list(votes)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert decide(shuffled, rule) == decide(votes, rule)
