"""Tests for p2pmesh/core/peers.py: replay and stale refusals, ageing out, connection state."""

from __future__ import annotations

import pytest

from p2pmesh.core.capability import Capabilities, build_record
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.peers import PeerTable
from p2pmesh.errors import DecodeError, ValidationError

NOW = 1_700_000_000
ME = Ed25519Signer(b"\x41" * 32)
A = Ed25519Signer(b"\x42" * 32)
B = Ed25519Signer(b"\x43" * 32)
CAPS = Capabilities(
    addrs=("/ip4/127.0.0.1/tcp/4001",),
    cpus=4,
    cpus_physical=2,
    ram_mb=8192,
    disk_free_mb=10_000,
    load_milli=0,
    gpus=(),
    executors=("docker",),
    price=1,
    max_jobs=1,
    work=True,
    allow_images=(),
    agent="test",
)


def _rec(signer: Ed25519Signer, seq: int, now: int = NOW, ttl: int = 300) -> bytes:
    return build_record(signer, CAPS, seq=seq, now=now, ttl_s=ttl).raw


def test_offer_adds_entry() -> None:
    t = PeerTable(ME.peer_id)
    rec = t.offer(_rec(A, 1), NOW)
    assert rec.peer_id == A.peer_id
    entry = t.get(A.peer_id)
    assert entry is not None and entry.first_seen == entry.last_seen == NOW
    assert len(t) == 1 and t.known_seq(A.peer_id) == 1
    assert [e.record.peer_id for e in t.entries()] == [A.peer_id]


def test_newer_record_replaces_and_updates_last_seen() -> None:
    t = PeerTable(ME.peer_id)
    t.offer(_rec(A, 1), NOW)
    t.offer(_rec(A, 2, now=NOW + 10), NOW + 10)
    entry = t.get(A.peer_id)
    assert entry is not None
    assert entry.record.seq == 2 and entry.first_seen == NOW and entry.last_seen == NOW + 10


def test_replay_refused() -> None:
    t = PeerTable(ME.peer_id)
    raw = _rec(A, 1)
    t.offer(raw, NOW)
    with pytest.raises(ValidationError, match="stale or replayed"):
        t.offer(raw, NOW + 1)
    with pytest.raises(ValidationError, match="stale or replayed"):
        t.check(raw, NOW + 1)


def test_stale_seq_refused() -> None:
    t = PeerTable(ME.peer_id)
    old, new = _rec(A, 1), _rec(A, 2)
    t.offer(new, NOW)
    with pytest.raises(ValidationError, match="seq 1 <= 2"):
        t.offer(old, NOW)
    entry = t.get(A.peer_id)
    assert entry is not None and entry.record.seq == 2


def test_stale_seq_refused_even_after_expiry() -> None:
    t = PeerTable(ME.peer_id)
    t.offer(_rec(A, 5), NOW)
    assert t.expire(NOW + 300) == [A.peer_id]
    assert t.get(A.peer_id) is None
    # An older record, freshly valid in time, replayed after the entry aged out: still refused.
    with pytest.raises(ValidationError, match="stale or replayed"):
        t.offer(_rec(A, 4, now=NOW + 400), NOW + 400)
    assert t.get(A.peer_id) is None
    # A newer one brings the peer back.
    t.offer(_rec(A, 6, now=NOW + 400), NOW + 400)
    assert t.get(A.peer_id) is not None


def test_check_changes_nothing() -> None:
    t = PeerTable(ME.peer_id)
    raw = _rec(A, 1)
    assert t.check(raw, NOW).seq == 1
    assert len(t) == 0 and t.known_seq(A.peer_id) is None
    t.offer(raw, NOW)  # still acceptable after check


def test_invalid_records_leave_no_trace() -> None:
    t = PeerTable(ME.peer_id)
    bad = bytearray(_rec(A, 1))
    bad[-1] ^= 1
    with pytest.raises(ValidationError):
        t.offer(bytes(bad), NOW)
    with pytest.raises(DecodeError):
        t.offer(b"\xc1", NOW)
    with pytest.raises(ValidationError, match="expired"):
        t.offer(_rec(A, 1), NOW + 301)
    assert len(t) == 0 and t.known_seq(A.peer_id) is None


def test_ageing_out() -> None:
    t = PeerTable(ME.peer_id)
    t.offer(_rec(A, 1, ttl=100), NOW)
    t.offer(_rec(B, 1, ttl=300), NOW)
    assert t.expire(NOW + 99) == []
    assert t.expire(NOW + 100) == [A.peer_id]  # expires_at itself is expired
    assert [e.record.peer_id for e in t.entries()] == [B.peer_id]
    # A peer that keeps refreshing stays.
    t.offer(_rec(B, 2, now=NOW + 200), NOW + 200)
    assert t.expire(NOW + 400) == []
    assert t.expire(NOW + 500) == [B.peer_id]
    assert len(t) == 0


def test_own_record_tracked_but_not_listed() -> None:
    t = PeerTable(ME.peer_id)
    rec = t.offer(_rec(ME, 7), NOW)
    assert rec.peer_id == ME.peer_id
    assert len(t) == 0 and t.get(ME.peer_id) is None
    assert t.known_seq(ME.peer_id) == 7
    with pytest.raises(ValidationError, match="stale"):
        t.offer(_rec(ME, 7), NOW)


def test_connected_state_never_creates_entries() -> None:
    t = PeerTable(ME.peer_id)
    t.set_connected(A.peer_id, True, NOW)
    t.set_connected("12D3KooWnotarealpeer", True, NOW)
    assert len(t) == 0 and t.get(A.peer_id) is None and t.entries() == []
    assert t.is_connected(A.peer_id) and t.connected_count() == 2
    # A record arriving later inherits the connection state.
    t.offer(_rec(A, 1), NOW + 1)
    entry = t.get(A.peer_id)
    assert entry is not None and entry.connected


def test_connection_state_follows_entry() -> None:
    t = PeerTable(ME.peer_id)
    t.offer(_rec(A, 1), NOW)
    entry = t.get(A.peer_id)
    assert entry is not None and not entry.connected
    t.set_connected(A.peer_id, True, NOW + 5)
    assert entry.connected and entry.last_seen == NOW + 5
    t.set_connected(A.peer_id, False, NOW + 6)
    assert not entry.connected and not t.is_connected(A.peer_id)
    assert t.connected_count() == 0
    t.set_connected(B.peer_id, False, NOW)  # unknown and not connected: a no-op
    assert t.connected_count() == 0 and len(t) == 1


def test_expiry_keeps_connection_flag() -> None:
    t = PeerTable(ME.peer_id)
    t.offer(_rec(A, 1), NOW)
    t.set_connected(A.peer_id, True, NOW)
    t.expire(NOW + 300)
    assert t.get(A.peer_id) is None and t.is_connected(A.peer_id)
