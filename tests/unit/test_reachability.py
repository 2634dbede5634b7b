"""Reachability state, address selection and relay limits (core/reachability.py), the settings
that choose the relay mode, and the bootstrap profile that always relays."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pmesh.bootstrap.profile import bootstrap_argv
from p2pmesh.core import reachability as rc
from p2pmesh.daemon.settings import build_settings
from p2pmesh.errors import ConfigError, ValidationError

R = "12D3KooWRelay"
ME = "12D3KooWMe"


# -- the state ------------------------------------------------------------------------------------
def test_unknown_until_a_verdict_and_no_verdict_changes_nothing() -> None:
    r = rc.Reachability()
    assert r.state == rc.UNKNOWN
    assert not r.record("s1", None, 1.0)
    assert r.state == rc.UNKNOWN and r.changed_at is None


def test_one_verdict_decides_then_the_majority_of_latest_verdicts() -> None:
    r = rc.Reachability()
    assert r.record("s1", False, 1.0)
    assert r.state == rc.PRIVATE and r.changed_at == 1.0
    assert not r.record("s2", True, 2.0)  # 1 against 1: a tie keeps the state
    assert r.state == rc.PRIVATE
    assert r.record("s3", True, 3.0)
    assert r.state == rc.PUBLIC and r.changed_at == 3.0
    # A server's new answer replaces its old one; it does not count twice.
    assert not r.record("s3", True, 4.0)
    assert r.to_json()["reachable_votes"] == 2 and r.to_json()["unreachable_votes"] == 1
    assert r.record("s2", False, 5.0)
    assert r.state == rc.PRIVATE


def test_only_the_last_servers_are_remembered() -> None:
    r = rc.Reachability(max_servers=3)
    for i in range(3):
        r.record(f"old{i}", False, float(i))
    for i in range(3):
        r.record(f"new{i}", True, 10.0 + i)
    assert set(r.verdicts()) == {"new0", "new1", "new2"}
    assert r.state == rc.PUBLIC


def test_relay_service_by_mode_and_state() -> None:
    assert rc.offers_relay("auto", rc.PUBLIC)
    assert not rc.offers_relay("auto", rc.PRIVATE)
    assert not rc.offers_relay("auto", rc.UNKNOWN)
    assert not rc.offers_relay("off", rc.PUBLIC)
    assert all(rc.offers_relay("always", s) for s in (rc.PUBLIC, rc.PRIVATE, rc.UNKNOWN))
    with pytest.raises(ValidationError):
        rc.offers_relay("sometimes", rc.PUBLIC)
    assert rc.wants_reservation(rc.PRIVATE)
    assert not rc.wants_reservation(rc.PUBLIC) and not rc.wants_reservation(rc.UNKNOWN)


# -- addresses ------------------------------------------------------------------------------------
def test_circuit_address_form() -> None:
    addr = rc.circuit_addr(f"/ip4/10.0.0.1/tcp/4001/p2p/{R}", R)
    assert addr == f"/ip4/10.0.0.1/tcp/4001/p2p/{R}/p2p-circuit"
    assert rc.circuit_addr("/ip4/10.0.0.1/tcp/4001", R) == addr
    assert rc.is_circuit(addr) and rc.is_circuit(f"{addr}/p2p/{ME}")
    assert not rc.is_circuit("/ip4/10.0.0.1/tcp/4001")
    assert not rc.is_circuit("/dns4/p2p-circuit-host.example/tcp/1")
    assert rc.relay_of(f"{addr}/p2p/{ME}") == R
    assert rc.relay_of("/ip4/10.0.0.1/tcp/4001") is None
    assert rc.relay_of("/p2p-circuit/p2p/x") is None
    for bad in (addr, "ip4/1.2.3.4/tcp/1"):
        with pytest.raises(ValidationError):
            rc.circuit_addr(bad, R)


def test_advertised_addresses_put_relays_first_only_while_private() -> None:
    listen = ["/ip4/192.168.1.2/tcp/4001", "/ip4/192.168.1.2/tcp/4001"]
    circuits = [f"/ip4/10.0.0.1/tcp/4001/p2p/{R}/p2p-circuit"]
    assert rc.advertised_addrs(listen, rc.PRIVATE, circuits) == [*circuits, listen[0]]
    assert rc.advertised_addrs(listen, rc.PUBLIC, circuits) == [listen[0]]
    assert rc.advertised_addrs(listen, rc.UNKNOWN, circuits) == [listen[0]]
    many = [f"/ip4/10.0.0.{i}/tcp/1" for i in range(30)]
    assert len(rc.advertised_addrs(many, rc.PRIVATE, circuits)) == 16


def test_dial_order_tries_a_natted_peers_own_network_addresses_last() -> None:
    circuit = f"/ip4/10.0.0.1/tcp/4001/p2p/{R}/p2p-circuit/p2p/{ME}"
    home = f"/ip4/192.168.1.2/tcp/4001/p2p/{ME}"
    public = f"/ip4/1.2.3.4/tcp/4001/p2p/{ME}"
    assert rc.dial_order([circuit, home, public]) == [public, circuit, home]
    # A peer without a relay: its addresses as given (LAN and loopback meshes).
    assert rc.dial_order([home, public, home]) == [home, public]
    assert rc.dial_order(["/ip6/::1/tcp/1", circuit]) == [circuit, "/ip6/::1/tcp/1"]
    assert rc.dial_order(["/dns4/x.example/tcp/1", circuit]) == ["/dns4/x.example/tcp/1", circuit]


def test_relay_candidates_bootstrap_first_never_held_or_refused() -> None:
    connected = ["p1", "boot", "p2", "p3"]
    assert rc.relay_candidates(connected, ["boot", "gone"], [], []) == ["boot", "p1", "p2", "p3"]
    assert rc.relay_candidates(connected, ["boot"], ["boot"], ["p2"]) == ["p1", "p3"]


def test_relay_limits_must_be_positive() -> None:
    assert rc.RelayLimits().circuit_bytes == 128 * 1024 * 1024
    for bad in ({"reservations": 0}, {"circuit_bytes": 0}, {"reservation_ttl_s": 10}):
        with pytest.raises(ValidationError):
            rc.RelayLimits(**bad)  # type: ignore[arg-type]


# -- settings and the bootstrap profile --------------------------------------------------------
def test_relay_setting_flag_config_and_default(tmp_path: Path) -> None:
    assert build_settings(tmp_path, {}).relay == "auto"
    assert build_settings(tmp_path, {"no_relay": True}).relay == "off"
    assert build_settings(tmp_path, {"relay": "always"}).relay == "always"
    (tmp_path / "config.toml").write_text('relay = "off"\n')
    assert build_settings(tmp_path, {}).relay == "off"
    assert build_settings(tmp_path, {"relay": "auto"}).relay == "auto"
    (tmp_path / "config.toml").write_text('relay = "maybe"\n')
    with pytest.raises(ConfigError, match="relay"):
        build_settings(tmp_path, {})


def test_bootstrap_profile_always_relays_unless_told() -> None:
    argv = bootstrap_argv(["--listen", "/ip4/0.0.0.0/tcp/4001"])
    assert argv[argv.index("--relay") + 1] == "always"
    assert argv.count("--relay") == 1
    told = bootstrap_argv(["--relay", "off"])
    assert told.count("--relay") == 1 and told[told.index("--relay") + 1] == "off"
    assert "--relay" not in bootstrap_argv(["--no-relay"])


# -- the status view ------------------------------------------------------------------------------
def test_status_says_reachability_relays_and_connection_kinds() -> None:
    from cli.views import reachability_summary

    relay = "12D3KooWRelayRelayRelayRelayRelayRelayRelayabcd"
    nat = {
        "reachability": {"state": "private"},
        "relays": {relay: f"/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit"},
        "relay_mode": "auto",
        "relay_service": {"on": False},
        "connections": {"p1": "direct", "p2": "relayed", "p3": "relayed"},
    }
    text = reachability_summary(nat)
    assert text.startswith("private, via relay ")
    assert "relaying off" in text and "1 direct, 2 relayed" in text
    public = {"reachability": {"state": "public"}, "relay_service": {"on": True,
              "reservations_held": 3}}  # fmt: skip
    assert reachability_summary(public) == "public; relaying for others (3 reservations)"
    assert "(--no-relay)" in reachability_summary({"relay_mode": "off", "reachability": {}})
    # Whatever a status document holds, the view never crashes.
    for junk in (None, 3, "x", [], {"reachability": 5, "relays": [1], "connections": "z"}):
        assert isinstance(reachability_summary(junk), str)


def test_relay_limits_from_config(tmp_path: Path) -> None:
    assert build_settings(tmp_path, {}).relay_limits == rc.RelayLimits()
    (tmp_path / "config.toml").write_text(
        "relay_reservations = 2\nrelay_circuits = 3\nrelay_circuit_mb = 5\n"
        "relay_circuit_minutes = 7\n"
    )
    got = build_settings(tmp_path, {}).relay_limits
    assert (got.reservations, got.circuits) == (2, 3)
    assert (got.circuit_bytes, got.circuit_duration_s) == (5 << 20, 7 * 60)
    (tmp_path / "config.toml").write_text("relay_circuits = 0\n")
    with pytest.raises(ConfigError, match="circuits"):
        build_settings(tmp_path, {})


def test_metrics_show_reachability_paths_and_reservations() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from p2pmesh.daemon import metrics as metrics_mod
    from tests.unit.test_http import _view

    def view() -> dict:
        v = _view()
        v["nat"] = {
            "reachability": {"state": "private"},
            "connections": {"a": "direct", "b": "relayed", "c": "relayed"},
            "relay_service": {"on": False, "reservations_held": 0},
            "relays": {R: f"/ip4/10.0.0.1/tcp/1/p2p/{R}/p2p-circuit"},
        }
        return v

    text = metrics_mod.exposition(metrics_mod.make_registry(view)).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("p2pmesh_reachability", (("state", "private"),))] == 1
    assert samples[("p2pmesh_reachability", (("state", "public"),))] == 0
    assert samples[("p2pmesh_peer_connections", (("kind", "relayed"),))] == 2
    assert samples[("p2pmesh_peer_connections", (("kind", "direct"),))] == 1
    assert samples[("p2pmesh_relay_reservations_made", ())] == 1
    assert samples[("p2pmesh_relay_reservations_held", ())] == 0
