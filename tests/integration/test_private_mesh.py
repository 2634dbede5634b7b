"""Private meshes (``up --swarm-key FILE``): real daemons as processes on 127.0.0.1.

What is proved: members sharing one swarm key (the bootstrap node run as ``python -m
p2pmesh.bootstrap --swarm-key``) find each other and run a job end to end in a real container;
a node without the key, or with another key, bootstrapping to them gets no connection, no
record and no gossip (so no offer), while the members log each refused connection in one clear
line, in both directions, and keep running; mDNS still works among members, while a stranger
found by mDNS cannot connect; and a bad key file stops ``up`` (and the bootstrap node) with one
line and exit code 2, before anything listens.

Ports: ephemeral by default, like the rest of the suite; ``P2PMESH_TEST_PORT_BASE=N`` makes
this module listen on N, N+1, … instead (for machines where each user has a port range).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from jobmesh import ALLOW_OURS, docker_missing, offer, write_job
from mesh import LOCAL_LISTEN, Mesh, MeshNode, run_cli, wait_until

from p2pmesh.core.swarmkey import fingerprint, format_swarm_key, parse_swarm_key

pytestmark = pytest.mark.integration

DISCOVERY_TIMEOUT_S = 45.0
REFUSED_TIMEOUT_S = 40.0
SETTLE_S = 8.0  # outsiders get this long after their refusals to sneak anything in
REFUSED_LINE = "refused a connection: not a member of this private mesh"
_BASE = int(os.environ.get("P2PMESH_TEST_PORT_BASE", "0") or 0)
_PORTS = itertools.count(_BASE)


def _listen() -> str:
    return LOCAL_LISTEN if not _BASE else f"/ip4/127.0.0.1/tcp/{next(_PORTS)}"


def _key_file(folder: Path, name: str) -> tuple[Path, str]:
    """A fresh key written by ``p2pmesh swarm-key new``, as a user makes one; and its
    fingerprint."""
    path = folder / name
    res = run_cli(["swarm-key", "new", str(path)])
    assert res.returncode == 0, res.stderr
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    fp = fingerprint(parse_swarm_key(path.read_bytes()))
    assert fp in res.stdout
    return path, fp


class BootstrapNode(MeshNode):
    """``python -m p2pmesh.bootstrap`` with the harness's flags (it adds ``up`` itself)."""

    def argv(self) -> list[str]:
        args = super().argv()
        up = args.index("up")
        return [sys.executable, "-m", "p2pmesh.bootstrap", *args[up + 1 :]]


class PrivateMesh(Mesh):
    """A ``Mesh`` whose nodes all hold ``key``; node 0 runs as the bootstrap module."""

    def __init__(self, base: Path, n: int, key: Path, **kw: Any) -> None:
        super().__init__(base, n, extra_args=["--swarm-key", str(key)], **kw)

    def _make(self, i: int, bootstrap: Sequence[str]) -> MeshNode:
        cls = BootstrapNode if i == 0 else MeshNode
        return cls(
            self.base / f"node{i}",
            name=f"member{i}",
            listen=[_listen()],
            bootstrap=bootstrap,
            record_ttl=self.record_ttl,
            extra_args=[*self.extra_args, *self.node_args.get(i, ())],
            env={**self.env, **self.node_env.get(i, {})},
        )


class MdnsNode(MeshNode):
    """A node with mDNS on (the harness turns it off everywhere else) and no bootstrap."""

    def argv(self) -> list[str]:
        return [a for a in super().argv() if a != "--no-mdns"]


def _net(node: MeshNode) -> dict[str, Any]:
    return dict(node.query("status")["node"])


def _no_traceback(node: MeshNode) -> None:
    assert "Traceback" not in node.log_text(), node.log_tail(40)


# -- members ------------------------------------------------------------------------------------
def test_private_mesh_members_connect_and_run_a_job(tmp_path: Path) -> None:
    why = docker_missing()
    if why:
        pytest.skip(why)
    key, fp = _key_file(tmp_path, "swarm.key")
    with PrivateMesh(tmp_path / "mesh", 3, key, node_args={1: ALLOW_OURS, 2: ALLOW_OURS}) as mesh:
        mesh.wait_all_listed(DISCOVERY_TIMEOUT_S)
        for node in mesh.nodes:
            doc = node.status()["node"]
            assert doc["private"] is True and doc["swarm_key_fingerprint"] == fp
            assert node.status()["node"]["net"]["psk_refused"] == 0
            text = node.cli("status").stdout
            assert "Private" in text and f"yes (swarm key fingerprint {fp})" in text
            assert fp in node.log_text() and key.read_text().splitlines()[2] not in node.log_text()

        requester, worker = mesh.nodes[2], mesh.nodes[1]
        out = tmp_path / "results"
        job = write_job(tmp_path / "job", command=["sh", "-c", "echo private > /out/x"])
        res = offer(requester, job, "--wait", "--out", str(out))
        assert res.rc == 0, res.describe() + "\n" + mesh.log_tails()
        assert res.state == "done"
        assert (out / "outputs" / "x").read_text() == "private\n"
        result = json.loads((out / "result.json").read_text())
        assert [w["peer_id"] for w in result["workers"]] == [worker.peer_id]
        for node in mesh.nodes:
            _no_traceback(node)


# -- outsiders ----------------------------------------------------------------------------------
def test_private_mesh_outsider_cannot_connect(tmp_path: Path) -> None:
    key, fp = _key_file(tmp_path, "swarm.key")
    other, other_fp = _key_file(tmp_path, "other.key")
    assert fp != other_fp
    with PrivateMesh(tmp_path / "mesh", 1, key) as mesh:
        boot = mesh.bootstrap_node
        keyless = MeshNode(
            tmp_path / "keyless", name="keyless", listen=[_listen()], bootstrap=[boot.addr]
        )
        wrong = MeshNode(
            tmp_path / "wrong",
            name="wrong-key",
            listen=[_listen()],
            bootstrap=[boot.addr],
            extra_args=["--swarm-key", str(other)],
        )
        mesh.nodes += [keyless, wrong]  # the mesh stops them too
        keyless.start()
        wrong.start()
        # A member that also bootstraps from the keyless node: its outbound dial is refused.
        member = mesh.add_node(bootstrap=[boot.addr, keyless.addr])
        mesh.wait_all_listed(DISCOVERY_TIMEOUT_S, [boot, member])

        def refusals() -> list[dict[str, Any]]:
            found = []
            for node in (boot, member):
                for line in node.log_text().splitlines():
                    if REFUSED_LINE in line:
                        found.append(json.loads(line[line.index("{") :]))
            return found

        def all_kinds() -> list[dict[str, Any]] | None:
            got = refusals()
            kinds = {(r["direction"], r["reason"]) for r in got}
            want = {
                ("inbound", "the peer has no swarm key (it speaks plain libp2p)"),
                ("inbound", "the peer does not hold this mesh's swarm key"),
                ("outbound", "the peer has no swarm key (it speaks plain libp2p)"),
            }
            return got if want <= kinds else None

        got = wait_until(
            all_kinds,
            REFUSED_TIMEOUT_S,
            interval=0.5,
            message=lambda: f"refusals seen: {refusals()}\n{mesh.log_tails(10)}",
        )
        assert all(r["level"] == "warning" and r["remote"].startswith("127.0.0.1:") for r in got)

        # A member offers a job: gossip that only members may see.
        job = write_job(tmp_path / "job")
        sub = offer(member, job, "--bid-window", "2")
        assert sub.rc == 0, sub.describe()
        wait_until(
            lambda: member.query("status")["node"]["net"]["published"] > 0,
            10,
            message=lambda: member.log_tail(),
        )

        time.sleep(SETTLE_S)
        members = {boot.peer_id, member.peer_id}
        for outsider in (keyless, wrong):
            doc = _net(outsider)
            assert outsider.alive
            assert doc["peers_connected"] == 0 and doc["peers_known"] == 0, doc
            assert outsider.peers() == []  # no record of anyone
            net = doc["net"]
            # Its own announcements come back to its own subscription; nothing else arrives.
            assert net["gossip_received"] <= net["published"] and net["dht_get_ok"] == 0, net
            assert not (members & {p["peer_id"] for p in outsider.query("peers")})
            assert outsider.query("jobs") == []  # never heard of the member's offer
        assert _net(wrong)["private"] is True and _net(keyless)["private"] is False
        assert _net(wrong)["swarm_key_fingerprint"] == other_fp

        for node in (boot, member):
            assert node.alive, node.log_tail()
            doc = _net(node)
            assert doc["net"]["psk_refused"] > 0
            assert {p["peer_id"] for p in node.query("peers")} <= members
            assert doc["peers_connected"] == 1  # each other, nobody else
            _no_traceback(node)


def test_private_mesh_mdns_finds_members_but_not_strangers(tmp_path: Path) -> None:
    """mDNS still runs on a private node: members find each other by it alone; a stranger
    that finds them the same way cannot connect. (The stranger holds another key, not none:
    a keyless node with mDNS on could join any open node on this machine's network.)"""
    key, _ = _key_file(tmp_path, "swarm.key")
    other, _ = _key_file(tmp_path, "other.key")
    nodes = [
        MdnsNode(tmp_path / name, name=name, listen=[_listen()], extra_args=["--swarm-key", str(k)])
        for name, k in (("mdns-a", key), ("mdns-b", key), ("mdns-stranger", other))
    ]
    a, b, stranger = nodes
    try:
        for node in nodes:
            node.start()
        wait_until(
            lambda: b.peer_id in a.listed_ids() and a.peer_id in b.listed_ids(),
            DISCOVERY_TIMEOUT_S,
            interval=0.5,
            message=lambda: (
                "members did not find each other by mDNS\n"
                + "\n".join(n.log_tail(10) for n in nodes)
            ),
        )

        def refused_stranger() -> bool:
            return any(
                REFUSED_LINE in line and "does not hold this mesh's swarm key" in line
                for node in (a, b, stranger)
                for line in node.log_text().splitlines()
            )

        wait_until(
            refused_stranger,
            DISCOVERY_TIMEOUT_S,
            interval=0.5,
            message=lambda: "\n".join(n.log_tail(10) for n in nodes),
        )
        assert not ({a.peer_id, b.peer_id} & stranger.listed_ids())
        assert stranger.peer_id not in a.listed_ids() | b.listed_ids()
        for node in nodes:
            assert node.alive
            _no_traceback(node)
    finally:
        for node in nodes:
            node.close()


# -- bad key files ------------------------------------------------------------------------------
SECRET_HEX = "5e" * 32
BAD_FILES: dict[str, tuple[bytes, str]] = {
    "wrong-header": (b"/key/swarm/psk/9.9.9/\n/base16/\n" + SECRET_HEX.encode(), "first line"),
    "wrong-length": (b"/key/swarm/psk/1.0.0/\n/base16/\n" + b"5e" * 31, "62 hex digits"),
    "non-hex": (b"/key/swarm/psk/1.0.0/\n/base16/\n" + b"5g" * 32, "not hexadecimal"),
    "too-big": (b"/key/swarm/psk/1.0.0/\n/base16/\n" + b"5e" * 4096, "over 1024 bytes"),
    "unknown-encoding": (b"/key/swarm/psk/1.0.0/\n/rot13/\n" + SECRET_HEX.encode(), "rot13"),
    "empty": (b"", "empty"),
}


@pytest.mark.parametrize(
    "case", [*sorted(BAD_FILES), "missing", "directory", "config-key", "readable-by-others"]
)
def test_swarm_key_bad_file_refused(case: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key = tmp_path / "swarm.key"
    words = {"missing": "No such file", "directory": "not a regular file"}.get(case, "")
    if case in BAD_FILES:
        data, words = BAD_FILES[case]
        key.write_bytes(data)
        key.chmod(0o600)
    elif case == "readable-by-others":
        key.write_bytes(format_swarm_key(bytes.fromhex(SECRET_HEX)))
        key.chmod(0o644)
        words = "accessible by other users (mode 644) (run: chmod 600"
    elif case == "directory":
        key.mkdir()
    elif case == "config-key":
        key.write_bytes(BAD_FILES["non-hex"][0])
        key.chmod(0o600)
        words = "not hexadecimal"
        (home / "config.toml").write_text(f'swarm_key = "{key}"\n')
    base = ["--home", str(home), "--no-tui", "--no-mdns", "--no-shipped-bootstrap"]
    flag = [] if case == "config-key" else ["--swarm-key", str(key)]
    runs = [run_cli(["up", *base, *flag], timeout=60)]
    if case == "wrong-length":  # the bootstrap node reads the same flag the same way
        runs.append(
            subprocess.run(
                [sys.executable, "-m", "p2pmesh.bootstrap", *base, *flag],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        )
    for res in runs:
        assert res.returncode == 2, (res.returncode, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert lines[0].startswith(f"p2pmesh: swarm key {key}") and words in lines[0], lines
        assert "Traceback" not in res.stderr and SECRET_HEX[:16] not in res.stderr
        assert res.stdout == ""
    assert not (home / "node.json").exists()
    # up --check reads the key the same way
    check = run_cli(["up", *base, *flag, "--check"], timeout=60)
    assert check.returncode == 2 and check.stderr.strip() == runs[0].stderr.strip()


def test_swarm_key_up_check_says_private(tmp_path: Path) -> None:
    key, fp = _key_file(tmp_path, "swarm.key")
    home = tmp_path / "home"
    for flag, private in (([], False), (["--swarm-key", str(key)], True)):
        res = run_cli(["up", "--home", str(home), "--no-work", "--check", *flag], timeout=60)
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["private"] is private
        assert doc["swarm_key_fingerprint"] == (fp if private else None)
        assert key.read_text().splitlines()[2] not in res.stdout
    again = run_cli(["swarm-key", "new", str(key)])
    assert again.returncode == 2 and "not overwriting" in again.stderr
    shown = run_cli(["swarm-key", "show", str(key), "--json"])
    assert json.loads(shown.stdout)["swarm_key_fingerprint"] == fp
