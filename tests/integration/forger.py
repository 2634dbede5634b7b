"""A hostile peer for the integration tests: publishes forged capability records, sends garbage.

Standalone (``python forger.py --connect MULTIADDR --victim PEER_ID``): a py-libp2p host with the
daemon's GossipSub parameters and protocol IDs, that connects to one node and

1. fetches the node's records by peer exchange, waits until some real node has published a
   newer record, then gossips the *older* one again (a replay of a once-valid record);
2. gossips records that must all be refused: one signed by its own key but claiming the victim's
   peer ID; one with a bad signature; an expired one; one issued in the future; one living longer
   than the maximum TTL; an oversized one; garbage bytes; and a valid map that is no envelope;
3. opens peer-exchange streams and sends garbage (an absurd length header, a truncated header,
   random bytes, an oversized request), then one proper request to check the node still serves;
4. answers the node's own peer-exchange requests (it asks every new connection) with forged
   records, with non-msgpack garbage, and with an absurd frame header, reconnecting so that the
   node asks again;
5. last, opens a GossipSub stream and a DHT stream of its own and writes RPCs that do not parse.

Every forged record carries ``agent = "forger/1"`` and ``cpus = 4242``, so a test can recognise it.
Prints one JSON document on stdout: the identities that no node may ever list and what was sent.
Nothing here is imported by p2pmesh itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

import multiaddr
import nacl.utils
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from p2pmesh.adapters.libp2p.net import DHT_PREFIX, GOSSIPSUB_ID, MAX_PEX_BYTES, PEX_PROTOCOL
from p2pmesh.adapters.libp2p.streams import read_frame, write_frame
from p2pmesh.core import capability, codec
from p2pmesh.core.capability import Capabilities
from p2pmesh.core.crypto import Ed25519Signer
from p2pmesh.core.envelope import seal
from p2pmesh.core.node import TOPIC_CAPABILITIES
from p2pmesh.errors import DecodeError, MeshError

FORGED_AGENT = "forger/1"
FORGED_CPUS = 4242
STEP_S = 0.15  # pause between forged messages: we test validation, not rate limits


def forged_caps(**over: Any) -> Capabilities:
    base: dict[str, Any] = {
        "addrs": ("/ip4/127.0.0.1/tcp/9",),
        "cpus": FORGED_CPUS,
        "cpus_physical": FORGED_CPUS,
        "ram_mb": 4242 * 1024,
        "disk_free_mb": 1,
        "load_milli": 0,
        "gpus": (),
        "executors": ("docker",),
        "price": 0,
        "max_jobs": 64,
        "work": True,
        "allow_images": (),
        "agent": FORGED_AGENT,
    }
    base.update(over)
    return Capabilities(**base)


def record_body(peer_id: str, caps: Capabilities, *, seq: int, issued: int, ttl: int) -> dict:
    return {
        "peer_id": peer_id,
        "seq": seq,
        "issued_at": issued,
        "expires_at": issued + ttl,
        **capability.caps_body(caps),
    }


def build_forgeries(own: Ed25519Signer, victim: str) -> tuple[dict[str, bytes], list[str]]:
    """(name → bytes to publish, peer IDs that must never be listed)."""
    now = int(time.time())
    seq = now * 1000
    out: dict[str, bytes] = {}
    never: list[str] = [own.peer_id]

    # Signed by us, claiming to be the victim.
    out["impersonation"] = seal(
        own, "capability", record_body(victim, forged_caps(), seq=seq + 10**9, issued=now, ttl=600)
    )

    # A valid record of a fresh key whose signature is then damaged.
    k = Ed25519Signer(nacl.utils.random(32))
    never.append(k.peer_id)
    env = codec.decode(
        seal(k, "capability", record_body(k.peer_id, forged_caps(), seq=seq, issued=now, ttl=600))
    )
    env["sig"] = bytes([env["sig"][0] ^ 0x01]) + env["sig"][1:]
    out["bad_signature"] = codec.encode(env)

    # Signature and schema fine, but the time rules are broken.
    k = Ed25519Signer(nacl.utils.random(32))
    never.append(k.peer_id)
    out["expired"] = seal(
        k, "capability", record_body(k.peer_id, forged_caps(), seq=seq, issued=now - 900, ttl=60)
    )
    k = Ed25519Signer(nacl.utils.random(32))
    never.append(k.peer_id)
    out["future"] = seal(
        k,
        "capability",
        record_body(k.peer_id, forged_caps(), seq=seq, issued=now + 86_400, ttl=600),
    )
    k = Ed25519Signer(nacl.utils.random(32))
    never.append(k.peer_id)
    out["ttl_too_long"] = seal(
        k,
        "capability",
        record_body(k.peer_id, forged_caps(), seq=seq, issued=now, ttl=capability.MAX_TTL_S * 24),
    )

    # Larger than MAX_RECORD_BYTES (allowed images are the cheapest way to grow a record).
    k = Ed25519Signer(nacl.utils.random(32))
    never.append(k.peer_id)
    images = tuple(f"registry.example/{i:03d}/" + "x" * 200 for i in range(48))
    big = seal(
        k,
        "capability",
        record_body(k.peer_id, forged_caps(allow_images=images), seq=seq, issued=now, ttl=600),
    )
    assert len(big) > capability.MAX_RECORD_BYTES, len(big)
    out["oversized"] = big

    out["garbage"] = os.urandom(300)
    out["not_an_envelope"] = codec.encode({"t": "capability", "v": 1, "hello": "world"})
    out["empty"] = b""
    return out, never


class Forger:
    def __init__(self, target: str, victim: str, replay_wait_s: float) -> None:
        seed = nacl.utils.random(32)
        self.signer = Ed25519Signer(seed)
        self.host = new_host(key_pair=create_new_key_pair(seed))
        self.peer_id = self.host.get_id().pretty()
        assert self.peer_id == self.signer.peer_id
        self.gossipsub = GossipSub(
            protocols=[GOSSIPSUB_ID],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=1,
            spam_protection_enabled=True,
            max_messages_per_topic_per_second=500.0,
            eclipse_protection_enabled=False,
        )
        self.pubsub = Pubsub(self.host, self.gossipsub)
        self.target = info_from_p2p_addr(multiaddr.Multiaddr(target))
        self.victim = victim
        self.replay_wait_s = replay_wait_s
        self.forgeries, self.never = build_forgeries(self.signer, victim)
        self.report: dict[str, Any] = {
            "forger_peer_id": self.peer_id,
            "never_listed": self.never,
            "victim": victim,
            "gossip_published": [],
            "replay": None,
            "pex_garbage_sent": [],
            "pex_served": [],
            "pex_ok_after_garbage": False,
            "protocol_garbage_sent": [],
            "errors": [],
        }
        self._serve_modes = ["forged_records", "garbage", "absurd_header"]
        self._served = trio.Event()

    # -- our own peer-exchange server: what the node gets when it asks us -------------------
    async def _serve_pex(self, stream: Any) -> None:
        mode = self._serve_modes[len(self.report["pex_served"]) % len(self._serve_modes)]
        self.report["pex_served"].append(mode)
        try:
            with contextlib.suppress(MeshError):
                await read_frame(stream, max_bytes=16, timeout_s=5)
            if mode == "forged_records":
                records = [*self.forgeries.values(), 12345, "text", b"\x00" * 10]
                payload = codec.encode({"records": records}, max_bytes=MAX_PEX_BYTES)
                await write_frame(stream, payload, timeout_s=5)
            elif mode == "garbage":
                await write_frame(stream, os.urandom(4000), timeout_s=5)
            else:
                await stream.write(b"\xff\xff\xff\xf0" + os.urandom(64))
        except Exception as exc:
            self.report["errors"].append(f"serve {mode}: {type(exc).__name__}: {exc}"[:200])
        finally:
            with contextlib.suppress(Exception):
                await stream.close()
            self._served.set()

    # -- talking to the target -------------------------------------------------------------------
    async def _pex_fetch(self) -> list[bytes]:
        stream = await self.host.new_stream(self.target.peer_id, [PEX_PROTOCOL])
        try:
            await write_frame(stream, b"", timeout_s=10)
            data = await read_frame(stream, max_bytes=MAX_PEX_BYTES, timeout_s=10)
        finally:
            with contextlib.suppress(Exception):
                await stream.close()
        value = codec.decode(data, max_bytes=MAX_PEX_BYTES)
        return [r for r in value["records"] if isinstance(r, bytes)]

    async def _publish(self, name: str, data: bytes) -> None:
        # After a reconnection the old subscription can linger for a moment while the new
        # stream is not open yet; a message published then reaches nobody, and the test
        # counts on the target validating every one it was sent.
        await self._wait_target_subscribed()
        try:
            await self.pubsub.publish(TOPIC_CAPABILITIES, data)
            self.report["gossip_published"].append(name)
        except Exception as exc:
            self.report["errors"].append(f"publish {name}: {type(exc).__name__}: {exc}"[:200])
        await trio.sleep(STEP_S)

    async def _replay(self) -> None:
        """Publish a real node's record after that node has published a newer one."""
        first = {}
        for raw in await self._pex_fetch():
            with contextlib.suppress(DecodeError, MeshError):
                rec = capability.parse_record(raw)
                first[rec.peer_id] = rec
        deadline = trio.current_time() + self.replay_wait_s
        while trio.current_time() < deadline:
            await trio.sleep(1.0)
            for raw in await self._pex_fetch():
                try:
                    rec = capability.parse_record(raw)
                except (DecodeError, MeshError):
                    continue
                old = first.get(rec.peer_id)
                if old is not None and rec.seq > old.seq:
                    self.report["replay"] = {
                        "peer_id": old.peer_id,
                        "seq": old.seq,
                        "newer_seq": rec.seq,
                        "still_valid": old.expires_at > time.time(),
                    }
                    await self._publish("replay", old.raw)
                    return
        self.report["errors"].append("no newer record seen: replay not sent")

    async def _pex_garbage(self) -> None:
        sends = {
            "absurd_length": b"\xff\xff\xff\xff" + os.urandom(32),
            "truncated_header": b"\x00\x00",
            "random_bytes": os.urandom(2048),
            "oversized_request": (64).to_bytes(4, "big") + os.urandom(64),
        }
        for name, data in sends.items():
            try:
                stream = await self.host.new_stream(self.target.peer_id, [PEX_PROTOCOL])
                with trio.move_on_after(5):
                    await stream.write(data)
                    with contextlib.suppress(Exception):
                        await stream.read(1024)
                with contextlib.suppress(Exception):
                    await stream.close()
                self.report["pex_garbage_sent"].append(name)
            except Exception as exc:
                self.report["errors"].append(f"pex {name}: {type(exc).__name__}: {exc}"[:200])
        # The node must still answer a well-formed request.
        try:
            with trio.fail_after(10):
                records = await self._pex_fetch()
            self.report["pex_ok_after_garbage"] = bool(records)
        except Exception as exc:
            self.report["errors"].append(f"pex after garbage: {type(exc).__name__}: {exc}"[:200])

    async def _protocol_garbage(self) -> None:
        """Length-prefixed bytes that are no protobuf (field 1 with the invalid wire type 7)."""
        junk = b"\x0f" * 16
        frame = bytes([len(junk)]) + junk
        for name, proto in (("gossipsub", GOSSIPSUB_ID), ("dht", DHT_PREFIX + "/kad/1.0.0")):
            try:
                with trio.fail_after(10):
                    stream = await self.host.new_stream(self.target.peer_id, [proto])
                    await stream.write(frame)
                    await trio.sleep(0.5)
                with contextlib.suppress(Exception):
                    await stream.close()
                self.report["protocol_garbage_sent"].append(name)
            except Exception as exc:
                self.report["errors"].append(f"{name} garbage: {type(exc).__name__}: {exc}"[:200])

    def _target_reachable(self) -> bool:
        """True once a publish would reach the target: it announced the topic to us *and* our
        own pubsub stream to it is open (GossipSub skips a subscriber without one, silently)."""
        pid = self.target.peer_id
        return pid in self.pubsub.peer_topics.get(TOPIC_CAPABILITIES, ()) and (
            pid in self.pubsub.peers
        )

    async def _wait_target_subscribed(self) -> None:
        with trio.move_on_after(10):
            while not self._target_reachable():
                await trio.sleep(0.05)
            return
        self.report["errors"].append("target never announced its subscription")

    async def _reconnect_for_pex(self) -> None:
        """Make the node ask us for peers again (it asks on each new connection)."""
        for _ in range(len(self._serve_modes) - 1):
            with trio.move_on_after(5):
                await self._served.wait()
            self._served = trio.Event()
            await self.host.disconnect(self.target.peer_id)
            await trio.sleep(1.5)  # let the node see the disconnection before we come back
            await self.host.connect(self.target)
        with trio.move_on_after(5):
            await self._served.wait()

    async def run(self) -> None:
        async with self.host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            self.host.set_stream_handler(PEX_PROTOCOL, self._serve_pex)
            async with (
                background_trio_service(self.pubsub),
                background_trio_service(self.gossipsub),
            ):
                await self.pubsub.wait_until_ready()
                with trio.fail_after(15):
                    await self.host.connect(self.target)
                await self._wait_target_subscribed()
                await self._replay()
                for name, data in self.forgeries.items():
                    await self._publish(name, data)
                await self._pex_garbage()
                await self._reconnect_for_pex()
                await self._wait_target_subscribed()
                # A second round after reconnecting, with new pubsub sequence numbers.
                for name, data in self.forgeries.items():
                    await self._publish(name, data)
                await trio.sleep(1.0)  # let the last messages leave our queues
                await self._protocol_garbage()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connect", required=True, help="target node multiaddr with /p2p/ID")
    parser.add_argument("--victim", required=True, help="a real peer ID to impersonate")
    parser.add_argument(
        "--replay-wait", type=float, default=30.0, help="how long to wait for a newer record"
    )
    args = parser.parse_args(argv)
    for name in ("libp2p", "multiaddr", "async_service"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.basicConfig(level=logging.CRITICAL)
    forger = Forger(args.connect, args.victim, args.replay_wait)
    try:
        trio.run(forger.run)
    except Exception as exc:
        forger.report["errors"].append(f"fatal: {type(exc).__name__}: {exc}"[:300])
        sys.stdout.write(json.dumps(forger.report) + "\n")
        return 1
    sys.stdout.write(json.dumps(forger.report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["FORGED_AGENT", "FORGED_CPUS", "Forger", "build_forgeries", "main"]
