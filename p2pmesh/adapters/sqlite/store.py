"""The node's SQLite file: WAL mode, forward-only migrations, one writer on one worker thread.

All access goes through ``Store`` (synchronous, used from exactly one thread at a time) and
``TrioStore``, which runs every call on a single dedicated Trio worker thread: sqlite3
connections are not safe to share across threads, and one writer avoids ``database is locked``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import trio

from p2pmesh.errors import StoreError

T = TypeVar("T")

# Each entry upgrades the schema by one version. Never edit an entry once released: append.
MIGRATIONS: list[str] = [
    # 1: node metadata, peer records as received (signed bytes), events for the TUI.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE peers (
        peer_id TEXT PRIMARY KEY,
        record BLOB NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 2: jobs on both sides and the per-job event log.
    """
    CREATE TABLE jobs (
        job_id TEXT NOT NULL,
        role TEXT NOT NULL,              -- 'requester' | 'worker'
        state TEXT NOT NULL,
        doc TEXT NOT NULL,               -- JSON: the state machine's own snapshot
        updated_at REAL NOT NULL,
        PRIMARY KEY (job_id, role)
    );
    CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        kind TEXT NOT NULL,
        added_at REAL NOT NULL
    );
    """,
    # 3: the replicated ledger (blocks exactly as signed), fraud proofs, unfinished payments.
    """
    CREATE TABLE blocks (
        author TEXT NOT NULL,
        seq INTEGER NOT NULL,
        raw BLOB NOT NULL,
        PRIMARY KEY (author, seq)
    );
    CREATE TABLE frauds (author TEXT PRIMARY KEY, proof BLOB NOT NULL);
    CREATE TABLE payments (proposal_hash TEXT PRIMARY KEY, doc TEXT NOT NULL);
    """,
    # 4: wrong-result proofs held (PROTOCOL.md §8.8), one per (job, proven worker).
    """
    CREATE TABLE proofs (key TEXT PRIMARY KEY, proof BLOB NOT NULL);
    """,
    # 5: the cache (core/cache.py): input blobs, images p2pmesh loaded into its engine (never
    # the owner's own: only what is listed here is ever removed) and blobs of exported images.
    """
    CREATE TABLE cache (
        key TEXT PRIMARY KEY,            -- a blob's digest or an image's ID
        kind TEXT NOT NULL,              -- 'input' | 'image' | 'export'
        size INTEGER NOT NULL,
        last_used REAL NOT NULL,
        name TEXT NOT NULL DEFAULT ''    -- an image: the name it was loaded for
    );
    """,
]


QUICK_CHECK_S = 10.0  # a check still running then is abandoned: a big file is not damage
RECOVER_HINT = "run `p2pmesh up --recover` to set it aside and rebuild from the mesh"


def damaged(path: Path, what: object) -> StoreError:
    """The one line every damaged-database path ends in: which file, what, what to do."""
    said = " ".join(str(what).split())[:300]  # quick_check's report spans several lines
    return StoreError(f"database {path} is damaged ({said}); {RECOVER_HINT}", hint=RECOVER_HINT)


class Store:
    def __init__(self, path: Path, *, check_s: float = QUICK_CHECK_S) -> None:
        self.path = path
        self.check_finished = True
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._quick_check(check_s)
            self._migrate()
        except sqlite3.Error as exc:
            self._close_quietly()
            raise damaged(path, exc) from exc
        except StoreError:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        if hasattr(self, "_db"):
            self._db.close()

    def _quick_check(self, limit_s: float) -> None:
        """``PRAGMA quick_check``, abandoned after ``limit_s`` (then ``check_finished`` is
        False): damage in pages no open-time read touches shows up here, not mid-run."""
        stop_at = time.monotonic() + limit_s
        self._db.set_progress_handler(lambda: int(time.monotonic() > stop_at), 10_000)
        try:
            rows = self._db.execute("PRAGMA quick_check(5)").fetchall()
        except sqlite3.OperationalError as exc:
            if "interrupt" not in str(exc):
                raise
            self.check_finished = False
            return
        finally:
            self._db.set_progress_handler(None, 0)
        problems = [str(r[0]) for r in rows if r[0] != "ok"]
        if problems:
            raise damaged(self.path, "; ".join(problems))

    def startup_state(self) -> dict[str, Any]:
        """Everything a start reads, in one call and one error path: any damage the quick
        check missed (or a document that no longer decodes) is the same one-line refusal."""
        try:
            return {
                "record_seq": int(self.get_meta("record_seq", 0)),
                "records": self.peer_records(),
                "blocks": self.blocks(),
                "frauds": self.frauds(),
                "payments": self.payments(),
                "proofs": self.proofs(),
                "jobs": self.jobs(),
                "recovering": self.get_meta("recovering"),
            }
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise damaged(self.path, exc) from exc

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"database schema version {version} is newer than this p2pmesh "
                f"({len(MIGRATIONS)}); upgrade p2pmesh"
            )
        for i in range(version, len(MIGRATIONS)):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in MIGRATIONS[i].split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version = {i + 1}")
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    # -- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    # -- peers -------------------------------------------------------------------------------
    def put_peer(self, peer_id: str, record: bytes | None, now: float) -> None:
        if record is None:
            self._db.execute("DELETE FROM peers WHERE peer_id = ?", (peer_id,))
        else:
            self._db.execute(
                "INSERT INTO peers(peer_id, record, updated_at) VALUES(?, ?, ?) "
                "ON CONFLICT(peer_id) DO UPDATE SET record = excluded.record, "
                "updated_at = excluded.updated_at",
                (peer_id, record, now),
            )

    def peer_records(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._db.execute("SELECT record FROM peers")]

    # -- jobs --------------------------------------------------------------------------------
    def put_job(self, job_id: str, role: str, state: str, doc: dict[str, Any], now: float) -> None:
        self._db.execute(
            "INSERT INTO jobs(job_id, role, state, doc, updated_at) VALUES(?, ?, ?, ?, ?) "
            "ON CONFLICT(job_id, role) DO UPDATE SET state = excluded.state, "
            "doc = excluded.doc, updated_at = excluded.updated_at",
            (job_id, role, state, json.dumps(doc, sort_keys=True), now),
        )

    def jobs(self, role: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT job_id, role, state, doc, updated_at FROM jobs"
        args: tuple[Any, ...] = ()
        if role is not None:
            q += " WHERE role = ?"
            args = (role,)
        return [
            {"job_id": j, "role": r, "state": s, "doc": json.loads(d), "updated_at": u}
            for j, r, s, d, u in self._db.execute(q + " ORDER BY updated_at", args)
        ]

    # -- ledger ------------------------------------------------------------------------------
    def put_block(self, author: str, seq: int, raw: bytes) -> None:
        # OR IGNORE: blocks are immutable; a second write of the same height is a no-op (a
        # different block at that height is a fork, kept as a fraud proof, never stored here).
        self._db.execute(
            "INSERT OR IGNORE INTO blocks(author, seq, raw) VALUES(?, ?, ?)", (author, seq, raw)
        )

    def blocks(self) -> list[bytes]:
        return [
            bytes(r[0]) for r in self._db.execute("SELECT raw FROM blocks ORDER BY author, seq")
        ]

    def put_fraud(self, author: str, proof: bytes) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO frauds(author, proof) VALUES(?, ?)", (author, proof)
        )

    def frauds(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._db.execute("SELECT proof FROM frauds")]

    def put_proof(self, key: str, proof: bytes) -> None:
        self._db.execute("INSERT OR IGNORE INTO proofs(key, proof) VALUES(?, ?)", (key, proof))

    def proofs(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._db.execute("SELECT proof FROM proofs ORDER BY key")]

    def put_payment(self, proposal_hash: str, doc: dict[str, Any] | None) -> None:
        if doc is None:
            self._db.execute("DELETE FROM payments WHERE proposal_hash = ?", (proposal_hash,))
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO payments(proposal_hash, doc) VALUES(?, ?)",
                (proposal_hash, json.dumps(doc)),
            )

    def payments(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._db.execute("SELECT doc FROM payments")]

    def put_blob(self, digest: str, size: int, kind: str, now: float) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO blobs(digest, size, kind, added_at) VALUES(?, ?, ?, ?)",
            (digest, size, kind, now),
        )

    def cache_put(self, key: str, kind: str, size: int, now: float, name: str = "") -> None:
        self._db.execute(
            "INSERT INTO cache(key, kind, size, last_used, name) VALUES(?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET size = excluded.size, last_used = excluded.last_used",
            (key, kind, size, now, name),
        )

    def cache_touch(self, key: str, now: float) -> bool:
        cur = self._db.execute("UPDATE cache SET last_used = ? WHERE key = ?", (now, key))
        return cur.rowcount > 0

    def cache_remove(self, key: str) -> None:
        self._db.execute("DELETE FROM cache WHERE key = ?", (key,))

    def cache_entries(self) -> list[tuple[str, str, int, float, str]]:
        rows = self._db.execute("SELECT key, kind, size, last_used, name FROM cache ORDER BY key")
        return [(str(k), str(t), int(z), float(u), str(n)) for k, t, z, u, n in rows]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Several writes in one transaction: one commit (one WAL sync point) for all of them,
        and all or none of them if one fails."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def move_aside(path: Path, now: float) -> Path:
    """``up --recover``: rename a damaged database (and its WAL and shared-memory files) to
    ``<name>.damaged-<UTC time>``, kept for inspection; the next open starts a fresh one."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            src.replace(target.with_name(target.name + suffix))
    return target


class TrioStore:
    """Runs every ``Store`` call on one dedicated worker thread, in submission order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(1)
        self._lock = threading.Lock()

    def call_now(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the calling thread, serialised with the worker: for writes that must be
        durable before the caller goes on (our own ledger blocks before they are sent)."""
        with self._lock:
            try:
                return fn(*args)
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        def run() -> T:
            with self._lock:
                try:
                    return fn(*args)
                except sqlite3.Error as exc:
                    raise StoreError(str(exc)) from exc

        return await trio.to_thread.run_sync(run, limiter=self._limiter)
