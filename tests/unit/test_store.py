"""The SQLite store: a real file, WAL, forward-only migrations, one writer thread."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from p2pmesh.adapters.sqlite.store import MIGRATIONS, Store, TrioStore
from p2pmesh.errors import StoreError


def test_fresh_database_is_migrated_to_the_latest_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    assert store.schema_version == len(MIGRATIONS)
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()


def test_migrations_run_only_the_missing_steps(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO meta(key, value) VALUES('kept', '1')")
    db.commit()
    db.close()
    store = Store(path)
    assert store.schema_version == len(MIGRATIONS)
    assert store.get_meta("kept") == 1
    store.put_job("j1", "requester", "bidding", {"x": 1}, 1.0)
    assert store.jobs()[0]["doc"] == {"x": 1}
    store.close()


def test_a_home_of_the_previous_release_gains_the_proofs_table_and_keeps_its_ledger(
    tmp_path: Path,
) -> None:
    # Schema 3 is what the release before wrong-result proofs wrote (ledger, frauds, payments).
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    for step in MIGRATIONS[:3]:
        db.executescript(step)
    db.execute("PRAGMA user_version = 3")
    db.execute("INSERT INTO blocks(author, seq, raw) VALUES('a', 1, x'01')")
    db.execute("INSERT INTO frauds(author, proof) VALUES('b', x'02')")
    db.commit()
    db.close()
    store = Store(path)
    assert store.schema_version == len(MIGRATIONS)
    state = store.startup_state()
    assert state["blocks"] == [b"\x01"] and state["frauds"] == [b"\x02"]
    assert state["proofs"] == []
    store.put_proof("job/worker", b"\x03")
    store.put_proof("job/worker", b"\x04")  # one proof per key: the first stays
    assert store.proofs() == [b"\x03"]
    store.close()


def test_a_home_of_the_release_before_the_cache_gains_it_and_keeps_its_state(
    tmp_path: Path,
) -> None:
    # Schema 4 is what the release before the cache (issue 17) wrote.
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    for step in MIGRATIONS[:4]:
        db.executescript(step)
    db.execute("PRAGMA user_version = 4")
    db.execute("INSERT INTO proofs(key, proof) VALUES('j/w', x'05')")
    db.execute(
        "INSERT INTO jobs(job_id, role, state, doc, updated_at) "
        "VALUES('j1', 'worker', 'reported', '{\"job_id\": \"j1\"}', 1.0)"
    )
    db.commit()
    db.close()
    store = Store(path)
    assert store.schema_version == 5 == len(MIGRATIONS)
    state = store.startup_state()
    assert state["proofs"] == [b"\x05"] and [j["job_id"] for j in state["jobs"]] == ["j1"]
    assert store.cache_entries() == []
    store.cache_put("sha256:aa", "image", 10, 1.0, "p2pmesh/busybox:1")
    store.cache_put("sha256:bb", "input", 5, 2.0)
    assert store.cache_touch("sha256:aa", 3.0) and not store.cache_touch("sha256:cc", 3.0)
    store.cache_remove("sha256:bb")
    assert store.cache_entries() == [("sha256:aa", "image", 10, 3.0, "p2pmesh/busybox:1")]
    store.close()


def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = Store(path)
    s.set_meta("record_seq", 42)
    s.put_peer("peerA", b"\x01\x02", 5.0)
    s.put_job("j", "worker", "running", {"a": [1, 2]}, 2.0)
    s.put_job("j", "worker", "reported", {"a": [3]}, 3.0)
    s.close()
    s = Store(path)
    assert s.get_meta("record_seq") == 42
    assert s.peer_records() == [b"\x01\x02"]
    assert [(j["state"], j["doc"]) for j in s.jobs("worker")] == [("reported", {"a": [3]})]
    s.put_peer("peerA", None, 6.0)
    assert s.peer_records() == []
    s.close()


async def test_trio_store_runs_calls_in_order_on_one_thread(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    ts = TrioStore(store)
    async with trio.open_nursery() as n:
        for i in range(50):
            n.start_soon(ts.call, store.set_meta, f"k{i}", i)
    values = [await ts.call(store.get_meta, f"k{i}") for i in range(50)]
    assert values == list(range(50))
    store.close()


def test_a_transaction_commits_all_its_writes_or_none(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    with store.transaction():
        store.set_meta("a", 1)
        store.put_job("j1", "requester", "bidding", {"state": "bidding"}, 1.0)
    with pytest.raises(RuntimeError), store.transaction():
        store.set_meta("a", 2)
        store.put_job("j2", "requester", "bidding", {"state": "bidding"}, 2.0)
        raise RuntimeError("a write of the batch failed")
    store.close()
    again = Store(tmp_path / "state.db")
    assert again.get_meta("a") == 1
    assert [j["job_id"] for j in again.jobs()] == ["j1"]
    # And the connection is usable after the rollback.
    with again.transaction():
        again.set_meta("a", 3)
    assert again.get_meta("a") == 3
    again.close()
