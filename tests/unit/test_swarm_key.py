"""Swarm keys (core/swarmkey.py) and the PSK connection layer (adapters/libp2p/pnet.py).

The parser: a good key in each encoding go-libp2p reads, every bad form refused with one line
that never quotes the key, and random bytes never crash it. The cipher: our Salsa20 core equals
pycryptodome's, our XSalsa20 equals libsodium's (the keystream inside ``crypto_secretbox``), and
what ``PskConn`` puts on the wire is exactly nonce || XSalsa20(PSK, nonce) XOR plaintext, so a
third party can check it. Then real hosts on 127.0.0.1: same key connects, another key or none
is refused on its first bytes, and each refusal is reported with its reason.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import multiaddr
import pytest
import trio
from Crypto.Cipher import Salsa20
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from nacl.secret import SecretBox

from p2pmesh.adapters.libp2p import patches, pnet
from p2pmesh.core.swarmkey import (
    MAX_FILE_BYTES,
    SwarmKeyError,
    fingerprint,
    format_swarm_key,
    hsalsa20,
    parse_swarm_key,
    salsa20_block,
)
from p2pmesh.daemon.settings import build_settings, read_swarm_key
from p2pmesh.errors import ConfigError

KEY = bytes(range(32))
HEAD = b"/key/swarm/psk/1.0.0/\n"


# -- good keys ----------------------------------------------------------------------------------
GOOD = {
    "base16": HEAD + b"/base16/\n" + KEY.hex().encode() + b"\n",
    "base16-upper-no-newline": HEAD + b"/base16/\n" + KEY.hex().upper().encode(),
    "base16-crlf": HEAD.replace(b"\n", b"\r\n") + b"/base16/\r\n" + KEY.hex().encode() + b"\r\n",
    "base32": HEAD + b"/base32/\n" + base64.b32encode(KEY) + b"\n",
    "base32-unpadded": HEAD + b"/base32/\n" + base64.b32encode(KEY).rstrip(b"="),
    "base64": HEAD + b"/base64/\n" + base64.b64encode(KEY) + b"\n",
    "base64-wrapped": HEAD
    + b"/base64/\n"
    + base64.b64encode(KEY)[:20]
    + b"\n"
    + base64.b64encode(KEY)[20:]
    + b"\n",
    "bin": HEAD + b"/bin/\n" + KEY,
    "bin-newline": HEAD + b"/bin/\n" + KEY + b"\n",
    "bin-crlf": HEAD + b"/bin/\r\n" + KEY + b"\r\n",
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_key_in_each_encoding(name: str) -> None:
    assert parse_swarm_key(GOOD[name]) == KEY


def test_go_libp2p_vector_ff() -> None:
    # go-libp2p's own codec test: "/base16/" and 32 times "FF" decode to 32 bytes of 255.
    assert parse_swarm_key(HEAD + b"/base16/\n" + b"FF" * 32) == b"\xff" * 32


def test_raw_key_may_hold_any_byte() -> None:
    raw = b"\n" * 16 + b" " * 8 + b"\r\n" * 4
    assert parse_swarm_key(HEAD + b"/bin/\n" + raw) == raw


def test_format_then_parse_round_trips() -> None:
    for _ in range(20):
        key = os.urandom(32)
        text = format_swarm_key(key)
        assert text.splitlines()[:2] == [b"/key/swarm/psk/1.0.0/", b"/base16/"]
        assert parse_swarm_key(text) == key


# -- bad keys -----------------------------------------------------------------------------------
SECRET = "ab" * 32
BAD = {
    "empty": (b"", "empty"),
    "wrong-header": (b"/key/swarm/psk/2.0.0/\n/base16/\n" + SECRET.encode(), "first line"),
    "header-trailing-space": (b"/key/swarm/psk/1.0.0/ \n/base16/\n" + SECRET.encode(), "first"),
    "bare-hex": (SECRET.encode() + b"\n", "first line"),
    "header-only": (b"/key/swarm/psk/1.0.0/", "no encoding line"),
    "no-key": (HEAD + b"/base16/\n", "no key"),
    "blank-key": (HEAD + b"/base16/\n  \n", "no key"),
    "unknown-encoding": (HEAD + b"/base58/\n" + SECRET.encode(), "unknown encoding '/base58/'"),
    "binary-encoding-name": (HEAD + b"\xff\x00\n" + SECRET.encode(), "(not shown)"),
    "short-hex": (HEAD + b"/base16/\n" + SECRET[:-2].encode(), "62 hex digits"),
    "long-hex": (HEAD + b"/base16/\n" + SECRET.encode() + b"00", "66 hex digits"),
    "non-hex": (HEAD + b"/base16/\n" + b"zz" + SECRET[2:].encode(), "not hexadecimal"),
    "hex-split-over-lines": (HEAD + b"/base16/\n" + b"ab" * 16 + b"\n" + b"ab" * 16, "hex digits"),
    "non-ascii": (HEAD + b"/base16/\n" + "é".encode() * 32, "not base16 text"),
    "short-base64": (HEAD + b"/base64/\n" + base64.b64encode(KEY[:31]), "31 bytes"),
    "long-base64": (HEAD + b"/base64/\n" + base64.b64encode(KEY + b"x"), "33 bytes"),
    "bad-base64": (HEAD + b"/base64/\n" + b"!" * 44, "not valid base64"),
    "bad-base32": (HEAD + b"/base32/\n" + b"1" * 56, "not valid base32"),
    "short-bin": (HEAD + b"/bin/\n" + KEY[:31], "31 bytes"),
    "long-bin": (HEAD + b"/bin/\n" + KEY + b"xy", "34 bytes"),
    "too-big": (HEAD + b"/base16/\n" + SECRET.encode() + b"\n" * MAX_FILE_BYTES, "over 1024"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_key_is_refused_in_one_line(name: str) -> None:
    data, words = BAD[name]
    with pytest.raises(SwarmKeyError) as exc:
        parse_swarm_key(data)
    message = str(exc.value)
    assert words in message
    assert "\n" not in message and len(message) < 200
    assert SECRET not in message and SECRET[:16] not in message  # never quotes the key


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=1200))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        key = parse_swarm_key(data)
    except SwarmKeyError as exc:
        assert "\n" not in str(exc)
    else:
        assert len(key) == 32


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([b"/base16/", b"/base32/", b"/base64/", b"/bin/", b"/base58/", b""]),
    st.sampled_from([b"\n", b"\r\n"]),
    st.binary(max_size=120),
)
def test_random_bodies_under_real_headers_never_crash(enc: bytes, nl: bytes, body: bytes) -> None:
    try:
        assert len(parse_swarm_key(HEAD + enc + nl + body)) == 32
    except SwarmKeyError:
        pass


# -- files, settings ----------------------------------------------------------------------------
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_key_file_problems_are_config_errors(tmp_path: Path) -> None:
    good = _write(tmp_path / "swarm.key", format_swarm_key(KEY))
    assert read_swarm_key(good) == KEY
    cases = {
        tmp_path / "missing": "No such file",
        tmp_path: "not a regular file",
    }
    cases[_write(tmp_path / "big", b"x" * (MAX_FILE_BYTES + 1))] = "over 1024 bytes"
    cases[_write(tmp_path / "junk", b"hello\n")] = "first line"
    readable = _write(tmp_path / "readable", format_swarm_key(KEY))
    readable.chmod(0o640)
    cases[readable] = "accessible by other users (mode 640)"
    for path, words in cases.items():
        with pytest.raises(ConfigError) as exc:
            read_swarm_key(path)
        assert words in str(exc.value) and str(path) in str(exc.value)


def test_settings_flag_config_and_default(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert build_settings(home, {}).swarm_psk is None  # default: an open mesh
    _write(home / "swarm.key", format_swarm_key(KEY))
    (home / "config.toml").write_text('swarm_key = "swarm.key"\n')  # relative: to the home
    s = build_settings(home, {})
    assert s.swarm_key == home / "swarm.key" and s.swarm_psk == KEY
    assert KEY.hex() not in repr(s)  # the key stays out of any printed Settings
    other = _write(tmp_path / "other.key", format_swarm_key(b"\x07" * 32))
    assert build_settings(home, {"swarm_key": str(other)}).swarm_psk == b"\x07" * 32
    with pytest.raises(ConfigError, match="TCP only"):
        build_settings(home, {"listen": ["/ip4/127.0.0.1/udp/4001/quic-v1"]})


def test_force_pnet_refuses_an_open_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The pnet spec's safeguard: with LIBP2P_FORCE_PNET=1 a node never starts without a key.
    monkeypatch.setenv("LIBP2P_FORCE_PNET", "1")
    with pytest.raises(ConfigError, match="LIBP2P_FORCE_PNET"):
        build_settings(tmp_path, {})
    key = _write(tmp_path / "k", format_swarm_key(KEY))
    assert build_settings(tmp_path, {"swarm_key": str(key)}).swarm_psk == KEY


# -- the cipher ---------------------------------------------------------------------------------
def test_salsa20_block_equals_pycryptodome() -> None:
    for _ in range(10):
        key, nonce = os.urandom(32), os.urandom(8)
        stream = Salsa20.new(key=key, nonce=nonce).encrypt(bytes(64 * 3))
        for i in range(3):
            assert salsa20_block(key, nonce, i) == stream[64 * i : 64 * (i + 1)]


def test_xsalsa20_equals_libsodium() -> None:
    # crypto_secretbox is XSalsa20-Poly1305: bytes 32.. of its keystream encrypt the message.
    for _ in range(10):
        key, nonce = os.urandom(32), os.urandom(24)
        box = SecretBox(key).encrypt(bytes(200), nonce)
        ours = pnet.xsalsa20(key, nonce).encrypt(bytes(232))
        assert box.ciphertext[16:] == ours[32:]
        sub = hsalsa20(key, nonce[:16])
        assert Salsa20.new(key=sub, nonce=nonce[16:]).encrypt(bytes(232)) == ours


def test_fingerprint_is_go_libp2p_s() -> None:
    # SHAKE-128/16 of the Salsa20 keystream (PSK, nonce "finprint") over 64 zero bytes.
    for _ in range(5):
        key = os.urandom(32)
        enc = Salsa20.new(key=key, nonce=b"finprint").encrypt(bytes(64))
        assert fingerprint(key) == hashlib.shake_128(enc).hexdigest(16)
    assert fingerprint(KEY) != fingerprint(b"\x01" * 32)
    assert len(fingerprint(KEY)) == 32 and KEY.hex()[:8] not in fingerprint(KEY)


def test_protocol_md_vectors() -> None:
    # PROTOCOL.md §10's test vector, so the document and the code cannot drift apart.
    assert fingerprint(KEY) == "41dfbf48d882a8ee665983adfa7a48f7"
    assert fingerprint(b"\xff" * 32) == "f5c65793e0937d5a7a0755699ea879d4"
    nonce = bytes(range(1, 25))
    assert hsalsa20(KEY, nonce[:16]).hex() == (
        "81a0d46839c743cfc0df05bfcd314c98ed89a1321750e14ff30426b3246b437a"
    )
    sent = pnet.xsalsa20(KEY, nonce).encrypt(pnet.MULTISTREAM_HEADER)
    assert sent.hex() == "37d9fd05c537379226fdf04240cb8b9e74adf229"


class _Pipe:
    """An IRawConnection stand-in that records writes and replays scripted reads."""

    is_initiator = True

    def __init__(self, incoming: bytes = b"", chunk: int = 5) -> None:
        self.sent = b""
        self._in = incoming
        self._chunk = chunk

    async def write(self, data: bytes) -> None:
        self.sent += data

    async def read(self, n: int | None = None) -> bytes:
        take = min(self._chunk, n or self._chunk)
        out, self._in = self._in[:take], self._in[take:]
        return out

    def get_remote_address(self) -> tuple[str, int]:
        return ("192.0.2.7", 4001)


async def test_wire_format_is_nonce_then_xsalsa20() -> None:
    pipe = _Pipe()
    conn = pnet.PskConn(pipe, KEY)  # type: ignore[arg-type]
    # 32 zero bytes first: libsodium's secretbox keeps keystream bytes 0..31 for Poly1305, so
    # it can vouch only for what follows; the first 32 are checked against HSalsa20+Salsa20.
    await conn.write(bytes(32))
    await conn.write(b"\x13/multistream/1.0.0\n")
    await conn.write(b"more")
    nonce, body = pipe.sent[:24], pipe.sent[24:]
    sub = hsalsa20(KEY, nonce[:16])
    assert body[:32] == Salsa20.new(key=sub, nonce=nonce[16:]).encrypt(bytes(32))
    box = SecretBox(KEY).encrypt(bytes(len(body) - 32), nonce)
    keystream = box.ciphertext[16:]
    assert bytes(a ^ b for a, b in zip(body[32:], keystream, strict=True)) == (
        b"\x13/multistream/1.0.0\nmore"
    )


async def test_reads_in_small_pieces_and_decrypts() -> None:
    nonce = os.urandom(24)
    plain = pnet.MULTISTREAM_HEADER + b"/noise\n" * 3
    wire = nonce + pnet.xsalsa20(KEY, nonce).encrypt(plain)
    conn = pnet.PskConn(_Pipe(wire, chunk=3), KEY)  # type: ignore[arg-type]
    got = b""
    while len(got) < len(plain):
        got += await conn.read(100)
    assert got == plain


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (pnet.MULTISTREAM_HEADER + b"\x07/noise\n", pnet.NO_KEY),
        (
            bytes(24) + pnet.xsalsa20(b"\x09" * 32, bytes(24)).encrypt(pnet.MULTISTREAM_HEADER),
            pnet.WRONG_KEY,
        ),
    ],
)
async def test_a_stranger_is_refused_on_its_first_bytes(wire: bytes, reason: str) -> None:
    heard: list[pnet.Refusal] = []
    entry = (KEY, heard.append)
    pnet.refusal_listeners.append(entry)
    try:
        conn = pnet.PskConn(_Pipe(wire, chunk=4), KEY)  # type: ignore[arg-type]
        with pytest.raises(Exception, match="private mesh: connection refused"):
            for _ in range(20):
                await conn.read(100)
    finally:
        pnet.refusal_listeners.remove(entry)
    assert heard == [pnet.Refusal(inbound=False, remote="192.0.2.7:4001", reason=reason)]


def test_protect_is_idempotent() -> None:
    wrapped = pnet.protect(_Pipe(), KEY.hex())
    assert pnet.protect(wrapped, KEY.hex()) is wrapped


# -- real hosts ---------------------------------------------------------------------------------
def _host(psk: bytes | None) -> object:
    return new_host(key_pair=create_new_key_pair(os.urandom(32)), psk=psk.hex() if psk else None)


async def _try_connect(a_psk: bytes | None, b_psk: bytes | None) -> bool:
    a, b = _host(a_psk), _host(b_psk)
    any_port = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    async with a.run([any_port]), b.run([any_port]):  # type: ignore[attr-defined]
        info = info_from_p2p_addr(a.get_addrs()[0])  # type: ignore[attr-defined]
        try:
            with trio.fail_after(10):
                await b.connect(info)  # type: ignore[attr-defined]
        except Exception:
            return False
        return bool(b.get_network().get_connections(info.peer_id))  # type: ignore[attr-defined]


async def test_hosts_connect_only_under_the_same_key() -> None:
    patches.apply()
    assert patches.pnet_patched
    heard: list[pnet.Refusal] = []
    k1, k2 = os.urandom(32), os.urandom(32)
    entries = [(k1, heard.append), (k2, heard.append)]
    pnet.refusal_listeners.extend(entries)
    try:
        assert await _try_connect(k1, k1)
        assert not heard
        assert not await _try_connect(k1, k2)
        assert {r.reason for r in heard} == {pnet.WRONG_KEY}
        # Both ends see it: the refusing side reads what the other sent before it closes.
        assert {r.inbound for r in heard} == {True, False}
        heard.clear()
        assert not await _try_connect(k1, None)  # a keyless dialer: refused inbound
        assert heard and all(r.inbound and r.reason == pnet.NO_KEY for r in heard)
        heard.clear()
        assert not await _try_connect(None, k1)  # dialling a keyless node: refused outbound
        assert heard and all(not r.inbound and r.reason == pnet.NO_KEY for r in heard)
    finally:
        for entry in entries:
            pnet.refusal_listeners.remove(entry)


async def test_an_outbound_upgrade_off_the_dial_path_is_protected_too() -> None:
    # Circuit relay v2 hands its outbound connection to upgrade_outbound_raw_conn directly;
    # the other end wraps inbound, so this end must wrap as well (patches.py item 7).
    patches.apply()
    k = os.urandom(32)
    a, b = _host(k), _host(k)
    any_port = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    async with a.run([any_port]), b.run([any_port]):  # type: ignore[attr-defined]
        addr = a.get_addrs()[0]  # type: ignore[attr-defined]
        info = info_from_p2p_addr(addr)
        network = b.get_network()  # type: ignore[attr-defined]
        transport = network.transport_manager.transport_for_dialing(addr)
        raw = await transport.dial(addr)
        with trio.fail_after(10):
            conn = await b.upgrade_outbound_connection(raw, info.peer_id)  # type: ignore[attr-defined]
        assert conn.muxed_conn.peer_id == info.peer_id


def test_views_say_private_with_the_fingerprint_only() -> None:
    from rich.console import Console

    from p2pmesh.cli import views

    def shown(node: dict) -> str:
        console = Console(width=100, record=True)
        console.print(views.node_panel(node, 0.0))
        return console.export_text()

    fp = fingerprint(KEY)
    assert f"yes (swarm key fingerprint {fp})" in shown(
        {"private": True, "swarm_key_fingerprint": fp}
    )
    text = shown({"private": False, "net": {"psk_refused": 3}})
    assert "Private" in text and " no" in text and "3 connection(s) without the swarm key" in text
