"""The sender-record memo (patches.py item 5) against real py-libp2p envelopes and peerstores."""

from __future__ import annotations

import multiaddr
import pytest
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.utils import maybe_consume_signed_record

from p2pmesh.adapters.libp2p import patches


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _host(port: int) -> object:
    addr = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")
    return new_host(key_pair=create_new_key_pair(), listen_addrs=[addr])


def _rpc_from(host: object) -> rpc_pb2.RPC:
    rpc = rpc_pb2.RPC()
    rpc.senderRecord = env_to_send_in_RPC(host)[0]
    return rpc


@pytest.fixture()
def mesh() -> tuple[object, object, object]:
    return _host(4101), _host(4102), new_host(key_pair=create_new_key_pair())


def test_same_bytes_are_verified_once_then_accepted_from_memory(mesh) -> None:
    sender, _, receiver = mesh
    clock = Clock()
    memo = patches.SenderRecordMemo(maybe_consume_signed_record, clock=clock)
    rpc = _rpc_from(sender)
    for _ in range(5):
        assert memo(rpc, receiver, sender.get_id())
    assert (memo.verified, memo.skipped) == (1, 4)


def test_refresh_reconsumes_after_the_interval(mesh) -> None:
    sender, _, receiver = mesh
    clock = Clock()
    memo = patches.SenderRecordMemo(maybe_consume_signed_record, refresh_s=60, clock=clock)
    rpc = _rpc_from(sender)
    assert memo(rpc, receiver, sender.get_id())
    clock.now = 59.0
    assert memo(rpc, receiver, sender.get_id())
    clock.now = 61.0
    assert memo(rpc, receiver, sender.get_id())
    assert (memo.verified, memo.skipped) == (2, 1)


def test_record_of_another_peer_is_refused_every_time(mesh) -> None:
    sender, other, receiver = mesh
    memo = patches.SenderRecordMemo(maybe_consume_signed_record, clock=Clock())
    rpc = _rpc_from(sender)
    # The connection peer is `other`, the record is `sender`'s: the library refuses it.
    assert not memo(rpc, receiver, other.get_id())
    assert not memo(rpc, receiver, other.get_id())
    assert (memo.verified, memo.skipped) == (2, 0)
    # An accepted record for one peer does not make it acceptable from another.
    assert memo(rpc, receiver, sender.get_id())
    assert not memo(rpc, receiver, other.get_id())


def test_tampered_bytes_after_acceptance_are_verified_and_refused(mesh) -> None:
    sender, _, receiver = mesh
    memo = patches.SenderRecordMemo(maybe_consume_signed_record, clock=Clock())
    rpc = _rpc_from(sender)
    assert memo(rpc, receiver, sender.get_id())
    bad = rpc_pb2.RPC()
    raw = bytearray(rpc.senderRecord)
    raw[-1] ^= 0x01  # inside the signature
    bad.senderRecord = bytes(raw)
    assert not memo(bad, receiver, sender.get_id())
    # And the good bytes are verified again afterwards (the refusal forgot the acceptance).
    assert memo(rpc, receiver, sender.get_id())
    assert memo.verified == 3


def test_each_receiving_host_verifies_for_itself(mesh) -> None:
    sender, second_receiver, receiver = mesh
    hosts: list[object] = []

    def consume(msg: rpc_pb2.RPC, host: object, peer_id: object) -> bool:
        hosts.append(host)
        return maybe_consume_signed_record(msg, host, peer_id)

    memo = patches.SenderRecordMemo(consume, clock=Clock())
    rpc = _rpc_from(sender)
    assert memo(rpc, receiver, sender.get_id())
    assert memo(rpc, second_receiver, sender.get_id())
    assert memo(rpc, second_receiver, sender.get_id())
    assert hosts == [receiver, second_receiver]


def test_memory_is_bounded(mesh) -> None:
    _, _, receiver = mesh
    memo = patches.SenderRecordMemo(maybe_consume_signed_record, max_peers=3, clock=Clock())
    senders = [_host(4110 + i) for i in range(5)]
    for s in senders:
        assert memo(_rpc_from(s), receiver, s.get_id())
    assert len(memo._accepted) == 3
    assert memo(_rpc_from(senders[0]), receiver, senders[0].get_id())
    assert memo.verified == 6  # the oldest was forgotten, so it was verified again


def test_rpc_without_a_record_is_accepted_as_the_library_does(mesh) -> None:
    sender, _, receiver = mesh
    memo = patches.SenderRecordMemo(maybe_consume_signed_record, clock=Clock())
    assert memo(rpc_pb2.RPC(), receiver, sender.get_id())
    assert maybe_consume_signed_record(rpc_pb2.RPC(), receiver, sender.get_id())


def test_apply_installs_the_memo_where_the_library_calls_it() -> None:
    import libp2p.pubsub.floodsub as floodsub
    import libp2p.pubsub.gossipsub as gossipsub
    import libp2p.pubsub.pubsub as pubsub

    patches.apply()
    assert isinstance(patches.sender_records, patches.SenderRecordMemo)
    for module in (pubsub, gossipsub, floodsub):
        assert module.maybe_consume_signed_record is patches.sender_records
