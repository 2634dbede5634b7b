"""Recovery rules: a damaged store is one line; after `up --recover` nothing is signed until
our own chain is back from the peers that hold copies (no block at a height already used)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pmesh.adapters.sqlite.store import Store, move_aside
from p2pmesh.core.auction.messages import build_verdict
from p2pmesh.core.effects import Persist, StoreBlock, SyncChain
from p2pmesh.core.ledger.payments import RESEND_S, LedgerMachine
from p2pmesh.core.reputation import ReputationBook
from p2pmesh.errors import StoreError
from tests.unit.test_ledger import DIGEST, OUT, PRICE, W2, Pair, R, W


def _paid_pair() -> Pair:
    pr = Pair()
    pr.deliver_paid(pr.deliver_pay(pr.pay()))
    assert pr.w.account(W.peer_id).balance == PRICE
    return pr


def test_a_recovering_node_signs_nothing_until_its_chain_is_back() -> None:
    pr = _paid_pair()
    fresh = LedgerMachine(W, ReputationBook(W.peer_id))
    fresh.start_recovery(200, 30)
    assert not fresh.may_trade_with(R.peer_id, 1)  # no bid while recovering
    # A payment (say, for a second job) waits: nothing signed, nothing refused for good.
    pay = pr.pay(now=150, job_id="00" * 16)
    got = [
        e
        for s in pay
        if getattr(s, "kind", "") == "pay"
        for e in fresh.on_pay(s.data, R.peer_id, 201, pr.award_price)
    ]
    assert not any(isinstance(e, StoreBlock) for e in got)
    assert fresh.ledger.head_seq(W.peer_id) == 0

    # The requester's heads name our agreement at seq 1: we ask for our own chain back.
    asked = fresh.on_blocks(pr.r.on_heads_wanted(), R.peer_id, 202)
    heads_of_ours = [e for e in asked if isinstance(e, StoreBlock) and e.author == W.peer_id]
    syncs = [e for e in asked if isinstance(e, SyncChain)]
    assert heads_of_ours or syncs
    for s in syncs:
        asked += fresh.on_blocks(pr.r.blocks_for(s.author, s.first, s.last), R.peer_id, 203)
    # Our own recovered blocks are stored (they were lost with the database).
    assert (W.peer_id, 1) in {(e.author, e.seq) for e in asked if isinstance(e, StoreBlock)}
    assert fresh.account(W.peer_id).balance == PRICE
    assert fresh.recovering_until == 230
    ended = fresh.tick(230)
    assert fresh.recovering_until == 0
    assert any(isinstance(e, Persist) and e.key == "recovering" for e in ended)
    assert fresh.may_trade_with(R.peer_id, 1)


def test_recovery_waits_while_our_own_chain_has_a_gap() -> None:
    pr = _paid_pair()
    pr2 = Pair()
    pr2.w = pr.w  # the same worker paid a second time: its chain has two blocks
    pr2.r = pr.r
    job2 = "11" * 16
    pr2.awards[(job2, R.peer_id)] = PRICE
    pr2.verdict = build_verdict(
        R,
        job_id=job2,
        job_digest=DIGEST,
        outcome="accepted",
        accepted_digest=OUT,
        agreeing=[W.peer_id, W2.peer_id],
        dissenting=[],
        now=110,
    ).raw
    pr2.deliver_paid(pr2.deliver_pay(pr2.pay(now=120, job_id=job2)))
    assert pr.w.ledger.head_seq(W.peer_id) == 2
    fresh = LedgerMachine(W, ReputationBook(W.peer_id))
    fresh.start_recovery(200, 30)
    head = pr.w.ledger.head(W.peer_id)
    assert head is not None
    fresh.on_blocks([head.raw], R.peer_id, 201)  # only the head: seq 1 is missing
    fresh.tick(230)
    assert fresh.recovering_until == 230 + RESEND_S
    fresh.on_blocks(pr.r.blocks_for(W.peer_id, 1, 1), R.peer_id, 231)
    assert fresh.ledger.head_seq(W.peer_id) == 2
    fresh.tick(230 + RESEND_S)
    assert fresh.recovering_until == 0


def _filled(path: Path) -> None:
    s = Store(path)
    for i in range(2000):
        s.put_block(f"author{i % 7}", i, os.urandom(200))
        s.put_job(f"j{i}", "requester", "done", {"i": i, "pad": "x" * 100}, float(i))
    s.close()


def test_garbage_in_the_middle_is_one_line_naming_the_file_and_the_way_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    _filled(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(8192))
    with pytest.raises(StoreError) as err:
        Store(path).startup_state()
    line = str(err.value)
    assert "\n" not in line and str(path) in line and "--recover" in line


def test_a_report_of_several_lines_is_still_one_line(tmp_path: Path) -> None:
    from p2pmesh.adapters.sqlite.store import damaged

    line = str(damaged(tmp_path / "state.db", "*** in database main ***\nPage 1: bad\n"))
    assert "\n" not in line and "*** in database main *** Page 1: bad" in line


def test_an_unfinished_check_is_not_damage(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _filled(path)
    s = Store(path, check_s=0.0)
    assert not s.check_finished
    assert len(s.startup_state()["blocks"]) == 2000
    s.close()


def test_move_aside_keeps_the_damaged_file_named_with_the_time(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _filled(path)
    aside = move_aside(path, 1_800_000_000.0)
    assert not path.exists() and aside.exists()
    assert aside.name == "state.db.damaged-20270115T080000Z"
    assert Store(path).startup_state()["blocks"] == []


def test_the_new_timers_come_from_flags_over_config(tmp_path: Path) -> None:
    from p2pmesh.daemon.settings import build_settings
    from p2pmesh.errors import ConfigError

    (tmp_path / "config.toml").write_text("connection_grace_s = 7\nrecover_window_s = 40\n")
    s = build_settings(tmp_path, {})
    assert (s.connection_grace_s, s.recover_window_s, s.recover) == (7, 40, False)
    s = build_settings(tmp_path, {"connection_grace": 3, "recover": True})
    assert (s.connection_grace_s, s.recover) == (3, True)
    with pytest.raises(ConfigError, match="connection_grace_s"):
        build_settings(tmp_path, {"connection_grace": 0})
