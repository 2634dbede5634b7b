"""Tests for p2pmesh/core/node.py, driven through ``Node.handle`` with a fake clock.

The clock is a plain float (unix seconds); a tiny in-test router delivers each node's
``Publish`` effects to the other nodes as ``RecordReceived``, the way GossipSub would.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmesh.core import capability, codec
from p2pmesh.core.capability import Capabilities, Gpu, build_record, caps_body
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.effects import DhtGet, DhtPut, Dial, Effect, ExchangePeers, Log, Persist, Publish
from p2pmesh.core.envelope import seal
from p2pmesh.core.events import (
    DialFailed,
    PeerConnected,
    PeerDisconnected,
    PeerDiscovered,
    ProfileChanged,
    RecordReceived,
    Ticked,
)
from p2pmesh.core.node import TOPIC_CAPABILITIES, Node, NodeConfig, peer_id_of_addr
from p2pmesh.core.topics import ACCEPT, IGNORE, REJECT
from p2pmesh.errors import DecodeError

T0 = 1_700_000_000.0
TTL = 300


def _caps(port: int, **over: Any) -> Capabilities:
    caps = Capabilities(
        addrs=(f"/ip4/127.0.0.1/tcp/{port}",),
        cpus=4,
        cpus_physical=2,
        ram_mb=8192,
        disk_free_mb=10_000,
        load_milli=100,
        gpus=(),
        executors=("docker",),
        price=1,
        max_jobs=1,
        work=True,
        allow_images=(),
        agent="test",
    )
    return replace(caps, **over)


def _signer(i: int) -> Ed25519Signer:
    return Ed25519Signer(bytes([0x50 + i]) * 32)


def _node(i: int, **config: Any) -> Node:
    return Node(NodeConfig(record_ttl_s=TTL, **config), _signer(i), _caps(4000 + i))


def _of(effects: list[Effect], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


class Router:
    """Delivers every Publish to every other live node, recursively, at one instant."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = {n.peer_id: n for n in nodes}
        self.down: set[str] = set()
        self.effects: dict[str, list[Effect]] = defaultdict(list)

    def deliver(self, src: str, effects: list[Effect], now: float) -> None:
        queue = [(src, effects)]
        while queue:
            sender, effs = queue.pop(0)
            self.effects[sender].extend(effs)
            for eff in effs:
                if not isinstance(eff, Publish):
                    continue
                assert eff.topic == TOPIC_CAPABILITIES
                for pid, node in self.nodes.items():
                    if pid != sender and pid not in self.down:
                        ev = RecordReceived(eff.data, "gossip", sender)
                        queue.append((pid, node.handle(ev, now)))

    def tick(self, now: float) -> None:
        for pid, node in self.nodes.items():
            if pid not in self.down:
                self.deliver(pid, node.handle(Ticked(), now), now)

    def run(self, start: float, end: float, step: float = 1.0) -> None:
        now = start
        while now <= end:
            self.tick(now)
            now += step

    def published(self, pid: str) -> list[int]:
        return [codec.decode(e.data)["body"]["seq"] for e in _of(self.effects[pid], Publish)]


def _known(node: Node) -> set[str]:
    return {e.record.peer_id for e in node.peers.entries()}


# -- the mesh learns itself -----------------------------------------------------------------------


def test_everyone_learns_everyone() -> None:
    nodes = [_node(i) for i in range(3)]
    mesh = Router(nodes)
    mesh.tick(T0)
    ids = {n.peer_id for n in nodes}
    for n in nodes:
        assert _known(n) == ids - {n.peer_id}
        assert n.stats.records_accepted == 2 and n.stats.records_refused == 0
        # Each learned peer is persisted and, not being connected, dialled at its full address.
        persisted = {p.key for p in _of(mesh.effects[n.peer_id], Persist) if p.table == "peers"}
        assert persisted == ids - {n.peer_id}
        dials = {d.peer_id: d.addrs for d in _of(mesh.effects[n.peer_id], Dial)}
        assert set(dials) == ids - {n.peer_id}
        for pid, addrs in dials.items():
            assert all(a.endswith(f"/p2p/{pid}") for a in addrs)
    assert sorted(len(n.peers_json(T0)) for n in nodes) == [2, 2, 2]


def test_first_tick_publishes_gossip_and_dht() -> None:
    n = _node(0)
    out = n.handle(Ticked(), T0)
    pub = _of(out, Publish)
    put = _of(out, DhtPut)
    assert len(pub) == 1 and pub[0].topic == "p2pmesh/capabilities/1"
    assert put == [DhtPut(capability.dht_key(n.peer_id), pub[0].data)]
    seq = codec.decode(pub[0].data)["body"]["seq"]
    assert Persist("meta", "record_seq", seq) in out
    assert seq >= int(T0 * 1000)  # millisecond floor survives a lost counter
    assert n.own is not None and n.own.expires_at == int(T0) + TTL
    assert n.records() == [n.own.raw]


def test_seq_continues_from_stored_counter() -> None:
    stored = int(T0 * 1000) + 10_000
    n = Node(NodeConfig(record_ttl_s=TTL), _signer(0), _caps(4000), last_seq=stored)
    n.handle(Ticked(), T0)
    assert n.own is not None and n.own.seq == stored + 1


def test_republish_at_half_ttl_with_rising_seq() -> None:
    nodes = [_node(0), _node(1)]
    mesh = Router(nodes)
    mesh.run(T0, T0 + 149)
    a = nodes[0].peer_id
    assert len(mesh.published(a)) == 1
    mesh.run(T0 + 150, T0 + 150)
    seqs = mesh.published(a)
    assert len(seqs) == 2 and seqs[1] > seqs[0]
    # Over a long run: one publish per half TTL, always rising, and the peer never ages out.
    mesh.run(T0 + 151, T0 + 1000)
    seqs = mesh.published(a)
    assert len(seqs) == 1 + 1000 // (TTL // 2)
    assert seqs == sorted(set(seqs))
    assert _known(nodes[1]) == {a}


def test_material_profile_change_republishes_at_once() -> None:
    n = _node(0)
    n.handle(Ticked(), T0)
    out = n.handle(ProfileChanged(_caps(4000, price=5)), T0 + 10)
    pub = _of(out, Publish)
    assert len(pub) == 1 and codec.decode(pub[0].data)["body"]["price"] == 5


@pytest.mark.parametrize(
    "change",
    [
        {"cpus": 8},
        {"gpus": (Gpu("RTX 4090", 24564, "550.54", "8.9"),)},
        {"work": False},
        {"addrs": ("/ip4/10.0.0.1/tcp/1",)},
    ],
)
def test_other_material_changes_republish(change: dict[str, Any]) -> None:
    n = _node(0)
    n.handle(Ticked(), T0)
    assert len(_of(n.handle(ProfileChanged(_caps(4000, **change)), T0 + 5), Publish)) == 1


def test_load_and_disk_jitter_do_not_republish() -> None:
    n = _node(0)
    n.handle(Ticked(), T0)
    for i in range(1, 100):
        jitter = _caps(4000, load_milli=100 + i * 7, disk_free_mb=10_000 - i)
        assert _of(n.handle(ProfileChanged(jitter), T0 + i), Publish) == []
    # The timed refresh carries the latest load and disk.
    out = n.handle(Ticked(), T0 + TTL / 2)
    body = codec.decode(_of(out, Publish)[0].data)["body"]
    assert body["load_milli"] == 100 + 99 * 7 and body["disk_free_mb"] == 10_000 - 99


def test_change_within_min_interval_waits_for_next_tick() -> None:
    n = _node(0)
    n.handle(Ticked(), T0)
    assert _of(n.handle(ProfileChanged(_caps(4000, price=9)), T0 + 0.5), Publish) == []
    out = n.handle(Ticked(), T0 + 1.0)
    assert codec.decode(_of(out, Publish)[0].data)["body"]["price"] == 9
    assert _of(n.handle(Ticked(), T0 + 2.0), Publish) == []


# -- bootstrap ------------------------------------------------------------------------------------


def _boot_node() -> tuple[Node, str]:
    boot = _signer(9).peer_id
    addr = f"/ip4/127.0.0.1/tcp/4009/p2p/{boot}"
    n = _node(0, bootstrap=(addr, f"/ip4/127.0.0.1/tcp/4000/p2p/{_signer(0).peer_id}", "/dns/x"))
    return n, boot


def _dial_times(n: Node, start: float, end: float, step: float = 0.5) -> list[float]:
    times = []
    now = start
    while now <= end:
        if _of(n.handle(Ticked(), now), Dial):
            times.append(now - start)
        now += step
    return times


def test_bootstrap_exponential_backoff_up_to_max() -> None:
    n, boot = _boot_node()
    out = n.handle(Ticked(), T0)
    # Only the bootstrap peer: never ourselves, never an address without /p2p/<id>.
    assert _of(out, Dial) == [Dial(boot, (f"/ip4/127.0.0.1/tcp/4009/p2p/{boot}",))]
    times = [0.0, *(t + 0.5 for t in _dial_times(n, T0 + 0.5, T0 + 200))]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30]


def test_bootstrap_stops_while_connected_and_resets_after() -> None:
    n, boot = _boot_node()
    _dial_times(n, T0, T0 + 100)  # backoff now at its maximum
    n.handle(PeerConnected(boot), T0 + 100)
    assert _dial_times(n, T0 + 101, T0 + 400) == []
    n.handle(PeerDisconnected(boot), T0 + 400)
    times = _dial_times(n, T0 + 400, T0 + 420)
    # Dialled at once, then again after the minimum backoff: the backoff was reset.
    assert times[:3] == [0.0, 1.0, 3.0]


def test_no_bootstrap_configured_no_dials() -> None:
    n = _node(0)
    assert _dial_times(n, T0, T0 + 50) == []


# -- dialling learned peers -----------------------------------------------------------------------


def _record_of(i: int, seq: int, now: float = T0, **caps: Any) -> bytes:
    return build_record(_signer(i), _caps(4000 + i, **caps), seq=seq, now=int(now), ttl_s=TTL).raw


def test_dial_learned_peer_with_redial_suppression() -> None:
    n = _node(0)
    a = _signer(1).peer_id
    out = n.handle(RecordReceived(_record_of(1, 1), "gossip", a), T0)
    assert _of(out, Dial) == [Dial(a, (f"/ip4/127.0.0.1/tcp/4001/p2p/{a}",))]
    # A refresh within redial_after_s does not dial again; one after it does.
    out = n.handle(RecordReceived(_record_of(1, 2, T0 + 29), "gossip", a), T0 + 29)
    assert _of(out, Dial) == []
    out = n.handle(RecordReceived(_record_of(1, 3, T0 + 30), "gossip", a), T0 + 30)
    assert len(_of(out, Dial)) == 1
    # Once connected, never.
    n.handle(PeerConnected(a), T0 + 31)
    out = n.handle(RecordReceived(_record_of(1, 4, T0 + 100), "gossip", a), T0 + 100)
    assert _of(out, Dial) == []


def test_no_dial_without_addresses() -> None:
    n = _node(0)
    out = n.handle(RecordReceived(_record_of(1, 1, addrs=()), "dht"), T0)
    assert _of(out, Dial) == [] and _of(out, Persist)


def test_dialling_stops_at_target_connections() -> None:
    n = _node(0, target_connections=2)
    n.handle(PeerConnected(_signer(7).peer_id), T0)
    out = n.handle(RecordReceived(_record_of(1, 1), "gossip"), T0)
    assert len(_of(out, Dial)) == 1
    n.handle(PeerConnected(_signer(8).peer_id), T0)
    out = n.handle(RecordReceived(_record_of(2, 1), "gossip"), T0)
    assert _of(out, Dial) == []
    assert _signer(2).peer_id in _known(n)  # still learned, only not dialled


def test_mdns_discovery_dials_with_suppression() -> None:
    n = _node(0)
    a = _signer(1).peer_id
    addrs = (f"/ip4/192.168.1.5/tcp/4001/p2p/{a}",)
    assert n.handle(PeerDiscovered(a, addrs), T0) == [Dial(a, addrs)]
    assert n.handle(PeerDiscovered(a, addrs), T0 + 10) == []
    assert n.handle(PeerDiscovered(a, addrs), T0 + 30) == [Dial(a, addrs)]
    assert n.handle(PeerDiscovered(n.peer_id, addrs), T0 + 100) == []
    assert n.handle(PeerDiscovered(_signer(2).peer_id, ()), T0 + 100) == []
    n.handle(PeerConnected(a), T0 + 100)
    assert n.handle(PeerDiscovered(a, addrs), T0 + 200) == []
    # mDNS is a hint, not proof: nothing enters the peer table.
    assert len(n.peers) == 0


def test_peer_connected_asks_for_peers_then_the_dht_if_no_record_came() -> None:
    n = _node(0)
    a, b = _signer(1).peer_id, _signer(2).peer_id
    out = n.handle(PeerConnected(a), T0)
    assert ExchangePeers(a) in out and _of(out, DhtGet) == []
    assert n.handle(PeerConnected(a), T0 + 1) == []  # second connection to the same peer
    # No record of `a` arrived by peer exchange within the delay: look it up in the DHT, once.
    later = n.handle(Ticked(), T0 + n.config.dht_lookup_after_s + 1)
    assert DhtGet(capability.dht_key(a)) in later
    assert _of(n.handle(Ticked(), T0 + 30), DhtGet) == []
    n.handle(RecordReceived(_record_of(2, 1), "gossip"), T0)
    out = n.handle(PeerConnected(b), T0 + 2)
    assert ExchangePeers(b) in out
    assert _of(n.handle(Ticked(), T0 + 60), DhtGet) == []  # already known: no lookup
    assert len(n.peers) == 1  # connections alone never create entries


def test_dial_failed_is_logged_only() -> None:
    n = _node(0)
    out = n.handle(DialFailed(_signer(1).peer_id, "refused"), T0)
    assert [type(e) for e in out] == [Log]


def test_unknown_event_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        _node(0).handle(object(), T0)  # type: ignore[arg-type]


# -- ageing out -----------------------------------------------------------------------------------


def test_silent_peer_ages_out() -> None:
    nodes = [_node(i) for i in range(3)]
    mesh = Router(nodes)
    mesh.run(T0, T0 + 10)
    gone = nodes[2].peer_id
    mesh.down.add(gone)  # it stops refreshing
    last_expiry = max(
        e.record.expires_at
        for n in nodes[:2]
        for e in n.peers.entries()
        if e.record.peer_id == gone
    )
    mesh.run(T0 + 11, last_expiry - 1)
    assert all(gone in _known(n) for n in nodes[:2])
    mesh.run(last_expiry, last_expiry)
    for n in nodes[:2]:
        assert _known(n) == {nodes[0].peer_id, nodes[1].peer_id} - {n.peer_id}
        assert Persist("peers", gone, None) in mesh.effects[n.peer_id]
        assert any(isinstance(e, Log) and e.msg == "peer aged out" for e in mesh.effects[n.peer_id])


# -- hostile input --------------------------------------------------------------------------------


def test_record_validator_rejects_invalid_and_ignores_stale() -> None:
    n = _node(0)
    check = lambda data, now: n.validate_gossip(TOPIC_CAPABILITIES, data, now)  # noqa: E731
    good = _record_of(1, 5)
    assert check(good, T0) is ACCEPT
    assert len(n.peers) == 0  # a validator changes nothing
    tampered = bytearray(good)
    tampered[-3] ^= 0x10
    assert check(bytes(tampered), T0) is REJECT
    # Signed by key 1 but claiming to be peer 2.
    body = {"peer_id": _signer(2).peer_id, "seq": 1, "issued_at": int(T0)}
    forged = seal(
        _signer(1), "capability", {**body, "expires_at": int(T0) + 60, **caps_body(_caps(1))}
    )
    assert check(forged, T0) is REJECT
    assert check(good, T0 + TTL) is IGNORE  # expired: valid once, of no use now
    assert check(good, T0 - 1000) is IGNORE  # not yet valid at our clock
    assert check(b"", T0) is REJECT
    assert check(b"\x80", T0) is REJECT
    n.handle(RecordReceived(good, "gossip"), T0)
    assert check(good, T0 + 1) is IGNORE  # replayed: an honest duplicate
    assert check(_record_of(1, 4), T0 + 1) is IGNORE  # stale
    assert check(_record_of(1, 6), T0 + 1) is ACCEPT
    assert n.validate_gossip("p2pmesh/unknown/1", good, T0) is REJECT


def test_refused_records_are_counted_with_reasons() -> None:
    n = _node(0)
    raw = _record_of(1, 5)
    n.handle(RecordReceived(raw, "gossip"), T0)
    out = n.handle(RecordReceived(raw, "pex", _signer(3).peer_id), T0 + 1)
    assert [e.msg for e in _of(out, Log)] == ["record refused"]
    assert n.stats.records_refused == 1
    assert n.stats.refused_reasons == {"stale or replayed record": 1}
    assert n.node_json(T0)["stats"]["records_refused"] == 1


def test_own_record_from_the_network_is_ignored() -> None:
    n = _node(0)
    n.handle(Ticked(), T0)
    assert n.own is not None
    other = build_record(n.signer, n.caps, seq=n.own.seq + 1, now=int(T0), ttl_s=TTL).raw
    assert n.handle(RecordReceived(other, "gossip"), T0) == []
    assert len(n.peers) == 0


_GOOD = build_record(_signer(1), _caps(4001), seq=5, now=int(T0), ttl_s=TTL).raw


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.tuples(st.integers(0, len(_GOOD) - 1), st.integers(1, 255)).map(
            lambda p: _GOOD[: p[0]] + bytes([_GOOD[p[0]] ^ p[1]]) + _GOOD[p[0] + 1 :]
        ),
        st.integers(0, len(_GOOD)).map(lambda i: _GOOD[:i]),
    ),
    st.sampled_from(["gossip", "dht", "pex", "store"]),
    st.floats(T0 - 10_000, T0 + 10_000),
)
def test_handle_never_raises_on_hostile_records(data: bytes, source: str, now: float) -> None:
    n = _node(0)
    out = n.handle(RecordReceived(data, source, "12D3KooWhostile"), now)
    assert n.stats.records_accepted + n.stats.records_refused == 1
    assert all(isinstance(e, Log | Persist | Dial) for e in out)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(sorted(capability._BODY_FIELDS)),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=300),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=8,
    ),
)
def test_handle_never_raises_on_signed_hostile_fields(field: str, value: Any) -> None:
    n = _node(0)
    body = {
        "peer_id": _signer(1).peer_id,
        "seq": 1,
        "issued_at": int(T0),
        "expires_at": int(T0) + 60,
        **caps_body(_caps(4001)),
        field: value,
    }
    try:
        raw = seal(_signer(1), "capability", body)
    except DecodeError:
        return  # too deep to encode at all; nothing to deliver
    n.handle(RecordReceived(raw, "gossip"), T0)
    n.handle(Ticked(), T0 + 1)


@pytest.mark.parametrize("data", [None, "text", 5, [b"x"], bytearray(b"\x80")])
def test_handle_never_raises_on_non_bytes(data: Any) -> None:
    n = _node(0)
    out = n.handle(RecordReceived(data, "gossip"), T0)
    assert n.stats.records_refused == 1 and [e.msg for e in _of(out, Log)] == ["record refused"]


def test_unfit_local_profile_is_logged_not_raised() -> None:
    # Regression: a local profile that does not fit a record (allowed images over
    # MAX_RECORD_BYTES, an empty GPU name) made ``handle`` raise from ``build_record``, which
    # would have ended the daemon's owner task.
    n = _node(0)
    n.handle(Ticked(), T0)
    good = n.own
    images = tuple(f"registry.example/{'x' * 200}/{i}" for i in range(40))
    for i, caps in enumerate(
        [_caps(4000, allow_images=images), _caps(4000, gpus=(Gpu("", 1, "", ""),))], 1
    ):
        out = n.handle(ProfileChanged(caps), T0 + 10 * i)
        assert _of(out, Publish) == [] and _of(out, DhtPut) == []
        assert [e.level for e in _of(out, Log)] == ["error"]
        assert n.own is good  # the last good record stays in use
    # A fitting profile publishes again, with a sequence number above the last good one.
    out = n.handle(ProfileChanged(_caps(4000, price=7)), T0 + 100)
    [pub] = _of(out, Publish)
    assert good is not None and n.own is not None and n.own.seq > good.seq
    assert codec.decode(pub.data)["body"]["price"] == 7


# -- config and helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [NodeConfig(record_ttl_s=9), NodeConfig(record_ttl_s=3601), NodeConfig(target_connections=0)],
)
def test_config_validation(config: NodeConfig) -> None:
    with pytest.raises(ValueError):
        Node(config, _signer(0), _caps(4000))


def test_config_defaults() -> None:
    c = NodeConfig()
    assert (c.record_ttl_s, c.target_connections, c.redial_after_s) == (300, 8, 30.0)
    assert (c.bootstrap_backoff_min_s, c.bootstrap_backoff_max_s) == (1.0, 30.0)
    assert c.min_republish_interval_s == 1.0


@pytest.mark.parametrize(
    ("addr", "pid"),
    [
        ("/ip4/1.2.3.4/tcp/1/p2p/12D3KooWabc", "12D3KooWabc"),
        ("/ip4/1.2.3.4/tcp/1/p2p/12D3KooWabc/", "12D3KooWabc"),
        ("/ip4/1.2.3.4/tcp/1", None),
        ("", None),
    ],
)
def test_peer_id_of_addr(addr: str, pid: str | None) -> None:
    assert peer_id_of_addr(addr) == pid


def test_views() -> None:
    nodes = [_node(0), _node(1)]
    mesh = Router(nodes)
    mesh.tick(T0)
    nodes[0].handle(PeerConnected(nodes[1].peer_id), T0 + 1)
    [p] = nodes[0].peers_json(T0 + 1)
    assert p["peer_id"] == nodes[1].peer_id and p["connected"] is True
    assert p["addrs"] == [f"/ip4/127.0.0.1/tcp/4001/p2p/{nodes[1].peer_id}"]
    assert p["reputation"] == 0.1 and p["capabilities"]["cpus"] == 4
    j = nodes[0].node_json(T0 + 1)
    assert j["peers_known"] == 1 and j["peers_connected"] == 1 and j["record_seq"] > 0
    assert len(nodes[0].records()) == 2
