"""The node daemon as users run it: real ``p2pmesh up`` processes on 127.0.0.1.

What is checked: discovery with real capabilities, identity across restarts, survival of the
bootstrap node's crash, joining once a down bootstrap comes back, forged and garbage traffic being
ignored, CLI errors without a daemon, key-file refusals, and clean stops on SIGINT and SIGTERM.

The 5-node tests share one mesh (module fixture, ``--record-ttl 20`` so that every node
re-announces every ~10 s during the tests) and run in file order; the bootstrap-crash test kills
node0, so it comes last among them. Each still passes when run alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from mesh import LOCAL_LISTEN, Mesh, MeshNode, run_cli, wait_until

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
FORGER = HERE / "forger.py"
RECORD_TTL = 20  # → a re-announcement every ~10 s
DISCOVERY_TIMEOUT_S = 45.0
KEY_FILE = "node.key"


# -- what this machine really has, found without p2pmesh's own profiler ------------------------
def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        res = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=15,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return res.returncode == 0 and bool(res.stdout.strip())


def _nvidia_gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        res = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=15, check=False
        )
    except subprocess.TimeoutExpired:
        return 0
    if res.returncode != 0:
        return 0
    return sum(1 for line in res.stdout.splitlines() if line.startswith("GPU "))


@pytest.fixture(scope="module")
def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "ram_gb": psutil.virtual_memory().total / 2**30,
        "executors": ["docker"] if _docker_works() else [],
        "gpus": _nvidia_gpu_count(),
    }


@pytest.fixture(scope="module")
def mesh5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with Mesh(tmp_path_factory.mktemp("mesh5"), 5, record_ttl=RECORD_TTL) as mesh:
        mesh.wait_all_listed(DISCOVERY_TIMEOUT_S)
        yield mesh


def by_id(peers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["peer_id"]: p for p in peers}


def seqs(node: MeshNode) -> dict[str, int]:
    return {p["peer_id"]: int(p["record_seq"]) for p in node.query("peers")}


# -- 5 nodes ------------------------------------------------------------------------------------
def test_five_nodes_list_each_other_with_real_capabilities(
    mesh5: Mesh, machine: dict[str, Any]
) -> None:
    now = time.time()
    for node in mesh5.nodes:
        listed = by_id(node.peers())  # through the CLI, as a user sees it
        others = {n.peer_id: n for n in mesh5.nodes if n is not node}
        assert set(listed) == set(others), f"{node.name} lists {sorted(listed)}"
        for pid, other in others.items():
            p = listed[pid]
            caps = p["capabilities"]
            assert caps["cpus"] == machine["cpus"]
            assert caps["ram_gb"] == pytest.approx(machine["ram_gb"], rel=0.01)
            assert caps["executors"] == machine["executors"]
            assert isinstance(caps["gpus"], list) and len(caps["gpus"]) == machine["gpus"]
            for g in caps["gpus"]:
                assert g["name"] and g["memory_gb"] > 0
            assert caps["price"] == 1 and caps["work"] is True
            assert caps["agent"].startswith("p2pmesh/")
            assert set(other.addrs) <= set(p["addrs"]), (other.addrs, p["addrs"])
            assert isinstance(p["reputation"], int | float)
            assert now - 2 * RECORD_TTL < p["last_seen"] <= now + 5
            assert p["record_expires_at"] > now


def test_forged_records_and_garbage_are_ignored(mesh5: Mesh) -> None:
    try:
        _forger_is_ignored(mesh5)
    finally:
        # A node the forger managed to crash is restarted, so the later tests get a whole mesh.
        for node in mesh5.nodes:
            if not node.alive:
                node.start()


def _forger_is_ignored(mesh5: Mesh) -> None:
    target, victim = mesh5.nodes[1], mesh5.nodes[2]
    before = {n.name: n.status()["node"] for n in mesh5.nodes}
    res = subprocess.run(
        [
            sys.executable,
            str(FORGER),
            "--connect",
            target.addr,
            "--victim",
            victim.peer_id,
            "--replay-wait",
            str(RECORD_TTL + 5),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    for node in mesh5.nodes:
        assert node.alive, f"{node.name} died\n{node.log_tail(40)}"
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert not report["errors"], report["errors"]
    assert report["replay"] is not None and report["replay"]["still_valid"]
    assert len(report["gossip_published"]) >= 19
    assert report["pex_served"][:1] == ["forged_records"]
    assert len(report["pex_garbage_sent"]) == 4
    assert report["pex_ok_after_garbage"], "the node stopped serving peer exchange"
    assert report["protocol_garbage_sent"] == ["gossipsub", "dht"]

    # Give anything that slipped through time to spread before looking.
    time.sleep(2.0)
    never = set(report["never_listed"])
    real = {n.peer_id: n for n in mesh5.nodes}
    replayed = report["replay"]
    for node in mesh5.nodes:
        assert node.alive, f"{node.name} died\n{node.log_tail(40)}"
        listed = by_id(node.peers())
        assert not never & set(listed), f"{node.name} lists a forged identity"
        assert set(listed) == set(real) - {node.peer_id}
        for p in listed.values():
            caps = p["capabilities"]
            assert caps["agent"] != "forger/1" and caps["cpus"] != 4242, (node.name, p)
            assert set(p["addrs"]) == set(real[p["peer_id"]].addrs), (node.name, p["addrs"])
        if replayed["peer_id"] != node.peer_id:
            assert listed[replayed["peer_id"]]["record_seq"] >= replayed["newer_seq"], (
                f"{node.name} rolled back to a replayed record"
            )
    mesh5.wait_all_listed(DISCOVERY_TIMEOUT_S)

    after = {n.name: n.status()["node"] for n in mesh5.nodes}
    invalid = {
        k: after[k]["net"]["gossip_invalid"] - before[k]["net"]["gossip_invalid"] for k in after
    }
    refused = {
        k: after[k]["stats"]["records_refused"] - before[k]["stats"]["records_refused"]
        for k in after
    }
    published = len(report["gossip_published"])
    # The node the forger talked to refused every forged message in its topic validator...
    assert invalid[target.name] >= published, (invalid, published)
    # ...and its peer-exchange client refused the forged records the forger served it.
    assert refused[target.name] > 0, after[target.name]["stats"]
    reasons = " ".join(after[target.name]["stats"]["refused_reasons"])
    assert "signature" in reasons or "signer" in reasons, reasons
    # A refused message is not forwarded, so the others never had to look at them.
    for name, count in invalid.items():
        if name != target.name:
            assert count < published, (name, invalid)


def test_restarted_node_keeps_its_peer_id(mesh5: Mesh) -> None:
    node, watcher = mesh5.nodes[4], mesh5.nodes[1]
    pid_before, addr_before = node.peer_id, node.addr
    seq_before = seqs(watcher)[pid_before]
    node.stop(signal.SIGTERM)
    assert not node.node_json_path.exists()
    node.start()
    assert node.peer_id == pid_before
    ident = node.cli_json("id")
    assert ident["peer_id"] == pid_before
    # A fresh ephemeral port: the others must learn the new address from the new record.
    for other in mesh5.nodes:
        if other is node:
            continue
        wait_until(
            lambda o=other: (
                seqs(o).get(pid_before, 0) > seq_before
                and node.addr in by_id(o.query("peers"))[pid_before]["addrs"]
            ),
            DISCOVERY_TIMEOUT_S,
            message=lambda o=other: f"{o.name} did not see the restarted node's new record",
        )
    mesh5.wait_all_listed(DISCOVERY_TIMEOUT_S)
    assert addr_before.endswith(pid_before)


def test_mesh_survives_bootstrap_crash(mesh5: Mesh) -> None:
    boot = mesh5.nodes[0]
    rest = mesh5.nodes[1:]
    boot_id = boot.peer_id
    boot.kill()
    killed_at = time.time()
    assert not boot.alive
    baseline = {n.name: seqs(n) for n in rest}

    def refreshed() -> bool:
        for n in rest:
            now_seqs = seqs(n)
            for other in rest:
                if other is n:
                    continue
                if now_seqs.get(other.peer_id, 0) <= baseline[n.name].get(other.peer_id, 0):
                    return False
        return True

    # Every survivor sees a newer record from every other survivor: gossip still flows.
    wait_until(
        refreshed,
        RECORD_TTL + 25,
        interval=0.5,
        message=lambda: "no fresh records after the bootstrap crash\n" + mesh5.log_tails(10),
    )
    mesh5.wait_all_listed(DISCOVERY_TIMEOUT_S, nodes=rest)
    for n in rest:
        assert n.alive, n.log_tail()
        assert n.query("status")["node"]["peers_connected"] >= 1
    # The dead node's last record expires within one TTL and then it leaves every table.
    wait_until(
        lambda: all(boot_id not in n.listed_ids() for n in rest),
        RECORD_TTL + 15,
        interval=0.5,
        message="the crashed bootstrap node was never aged out",
    )
    assert time.time() - killed_at <= RECORD_TTL + 15


def test_all_nodes_stop_together_cleanly(mesh5: Mesh) -> None:
    running = mesh5.alive_nodes()
    assert running
    for n in running:
        n.send_signal(signal.SIGTERM)
    for n in running:
        rc = n.wait_exit(10)
        assert rc == 0, f"{n.name} exited {rc}\n{n.log_tail()}"
        assert not n.node_json_path.exists()
        assert not (n.home / "control.sock").exists()


# -- joining when the only bootstrap comes back -----------------------------------------------
def test_node_joins_once_its_bootstrap_comes_back(tmp_path: Path) -> None:
    a = MeshNode(tmp_path / "a", name="a")
    b = MeshNode(tmp_path / "b", name="b")
    try:
        a.start()
        a_id, a_addr, a_port = a.peer_id, a.addr, a.port
        a.stop()
        b.bootstrap = [a_addr]
        b.start()
        # Let b fail a few dials and back off (1, 2, 4, 8 s ...).
        time.sleep(6.0)
        assert b.alive and b.listed_ids() == set()
        a.listen = [f"/ip4/127.0.0.1/tcp/{a_port}"]
        a.start()
        back_at = time.monotonic()
        assert a.peer_id == a_id and a.addr == a_addr
        wait_until(
            lambda: a_id in b.listed_ids(),
            40,
            interval=0.5,
            message=lambda: "b never joined its returned bootstrap\n" + b.log_tail(),
        )
        joined_s = time.monotonic() - back_at
        wait_until(lambda: b.peer_id in a.listed_ids(), 15, message="a does not list b")
        assert joined_s <= 40
    finally:
        a.close()
        b.close()


# -- the CLI without a daemon, and key files ----------------------------------------------------
def test_peers_without_daemon_exits_1_with_hint(tmp_path: Path) -> None:
    res = run_cli(["peers", "--home", str(tmp_path / "nobody"), "--json"])
    assert res.returncode == 1
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "p2pmesh up" in lines[0]


def _up(home: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(
        [
            "up",
            "--home",
            str(home),
            "--no-mdns",
            "--no-tui",
            "--no-shipped-bootstrap",
            "--listen",
            LOCAL_LISTEN,
        ],
        timeout=60,
    )


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    from p2pmesh.daemon.home import ensure_home, load_or_create_key

    home = ensure_home(tmp_path / "home")
    load_or_create_key(home)
    key = home / KEY_FILE
    key.chmod(0o644)
    content = key.read_bytes()
    res = _up(home)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert str(key) in lines[0] and "chmod 600" in lines[0], lines[0]
    assert key.read_bytes() == content and (key.stat().st_mode & 0o777) == 0o644
    assert not (home / "node.json").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"\x00garbage\xff" * 7,
        b"p2pmesh-ed25519-seed-v1\nnot-hex-at-all\n",
        b"p2pmesh-ed25519-seed-v1\n" + b"ab" * 16 + b"\n",  # 16-byte seed
        b"",
    ],
    ids=["garbage", "not-hex", "short-seed", "empty"],
)
def test_corrupt_key_is_refused(tmp_path: Path, content: bytes) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key = home / KEY_FILE
    key.write_bytes(content)
    key.chmod(0o600)
    res = _up(home)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "corrupt" in lines[0], res.stderr
    # The identity is never silently replaced.
    assert key.read_bytes() == content
    assert not (home / "node.json").exists()


# -- signals --------------------------------------------------------------------------------------
def test_sigint_and_sigterm_stop_a_node_cleanly(tmp_path: Path) -> None:
    with Mesh(tmp_path, 2, record_ttl=RECORD_TTL) as mesh:
        mesh.wait_all_listed(DISCOVERY_TIMEOUT_S)
        # node1 (connected to node0) gets SIGINT, then node0 gets SIGTERM.
        for node, signum in ((mesh.nodes[1], signal.SIGINT), (mesh.nodes[0], signal.SIGTERM)):
            t0 = time.monotonic()
            rc = node.stop(signum, timeout=5.0)
            assert rc == 0
            assert time.monotonic() - t0 <= 5.0
            assert not node.node_json_path.exists()
            assert not (node.home / "control.sock").exists()
            log = node.log_text()
            assert "Traceback" not in log, node.log_tail(40)
            assert signal.Signals(signum).name in log
