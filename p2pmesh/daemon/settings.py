"""Settings: command-line flags over ``config.toml`` over defaults. The only reader of config.

Config keys (all optional) mirror the flags of ``p2pmesh up``::

    listen = ["/ip4/0.0.0.0/tcp/4001"]
    bootstrap = ["/ip4/…/tcp/4001/p2p/12D3KooW…"]
    mdns = true
    work = true
    price = 1              # credits per job (integer)
    max_jobs = 2           # concurrent jobs
    allow_image = ["p2pmesh/*"]
    record_ttl_s = 300
    credit_base = 100      # credits anyone may owe before earning (mutual credit)
    spot_check = 0.1       # share of "auto" jobs run alone by a credible worker that are re-checked
    prefix_diversity = true  # at most one replica of a job per observed /24 (IPv4) or /48 (IPv6)
    sortition = true       # many fitting peers known: only about k + 2 drawn ones may bid
    newcomer_share = 0.1   # chance that one slot of an award goes to a newcomer (by lottery)
    newcomer_checks = 3    # passed checks here before a bidder is established; 0: rule off
    hidden_replicas = 0.1  # share of checked jobs given one replica more, unseen by the workers
    proof_exclusion = 0.5  # wrong-result proofs' total weight that excludes a worker
    use_shipped_bootstrap = true
    connection_grace_s = 5 # a replica's worker whose connection closed is lost after this
    recover_window_s = 30  # `up --recover`: sign nothing until our chain came back this long
    http = "127.0.0.1:8484"  # /metrics, the status page, /api/…; "off" disables; port 0: any
    http_public = false    # allow a non-loopback http address (read-only, but unauthenticated)
    swarm_key = "swarm.key"  # a private mesh's pre-shared key file (relative: to the home)
    relay = "auto"         # relay for NATed peers: "auto" (while reachable), "off", "always"
    relay_reservations = 16  # peers that may hold a slot on our relay at once
    relay_circuits = 32    # relayed connections through us at once
    relay_circuit_mb = 128  # MiB one relayed connection may carry
    relay_circuit_minutes = 30  # how long one relayed connection may last
    pull = true            # a worker lacking a job's image may pull it from its registry
    cache_gb = 10          # fetched images and input blobs kept for the next job (LRU)
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pmesh.core.reachability import RELAY_MODES, RelayLimits
from p2pmesh.core.swarmkey import MAX_FILE_BYTES, SwarmKeyError, parse_swarm_key
from p2pmesh.daemon.home import CONFIG_FILE
from p2pmesh.daemon.http import DEFAULT_HTTP, is_loopback, parse_http_addr
from p2pmesh.errors import ConfigError, ValidationError

DEFAULT_LISTEN = ("/ip4/0.0.0.0/tcp/4001",)


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    listen: tuple[str, ...] = DEFAULT_LISTEN
    bootstrap: tuple[str, ...] = ()
    mdns: bool = True
    work: bool = True
    price: int = 1
    max_jobs: int = 2
    allow_images: tuple[str, ...] = ()
    record_ttl_s: int = 300
    use_shipped_bootstrap: bool = True
    tui: bool = True
    spot_check: float = 0.10
    credit_base: int = 100
    connection_grace_s: int = 5
    recover_window_s: int = 30
    recover: bool = False  # `up --recover`: set a damaged database aside, rebuild from the mesh
    prefix_diversity: bool = True
    sortition: bool = True
    newcomer_share: float = 0.1
    newcomer_checks: int = 3
    hidden_replicas: float = 0.10
    proof_exclusion: float = 0.5
    http: str = DEFAULT_HTTP  # HOST:PORT or "off"
    http_public: bool = False
    pull: bool = True  # `up --no-pull`: never ask a registry; images come from the mesh only
    cache_gb: float = 10.0
    swarm_key: Path | None = None  # the private mesh's key file; None: an open mesh
    swarm_psk: bytes | None = field(default=None, repr=False)  # its 32 bytes, read at start
    relay: str = "auto"  # core/reachability.py RELAY_MODES; `up --no-relay`: "off"
    relay_limits: RelayLimits = field(default_factory=RelayLimits)
    fault: str | None = None  # deliberate misbehaviour for tests and demos (see below)
    fault_after: int = 0  # P2PMESH_FAULT_AFTER: behave for this many jobs first
    fault_slow_s: float = 200.0  # P2PMESH_FAULT_SLOW_S: how late "slow" answers
    bench_executor: str | None = None  # P2PMESH_BENCH_EXECUTOR=instant (benchmarks only)
    extra: dict[str, Any] = field(default_factory=dict)


_KEYS: dict[str, type | tuple[type, ...]] = {
    "listen": list,
    "bootstrap": list,
    "mdns": bool,
    "work": bool,
    "price": int,
    "max_jobs": int,
    "allow_image": list,
    "record_ttl_s": int,
    "use_shipped_bootstrap": bool,
    "spot_check": (float, int),
    "credit_base": int,
    "connection_grace_s": int,
    "recover_window_s": int,
    "prefix_diversity": bool,
    "sortition": bool,
    "newcomer_share": (float, int),
    "newcomer_checks": int,
    "hidden_replicas": (float, int),
    "proof_exclusion": (float, int),
    "http": str,
    "http_public": bool,
    "swarm_key": str,
    "relay": str,
    "relay_reservations": int,
    "relay_circuits": int,
    "relay_circuit_mb": int,
    "relay_circuit_minutes": int,
    "pull": bool,
    "cache_gb": (float, int),
}


def read_config(home: Path) -> dict[str, Any]:
    path = home / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for key, value in data.items():
        want = _KEYS.get(key)
        if want is None:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(_KEYS))})")
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: {key} has the wrong type")
        if want is list and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: {key} must be a list of strings")
    return data


FAULTS = (
    "wrong-result",
    "no-show",
    "slow",
    "crash-mid-job",
    "fork-ledger",
    "withhold-outputs",
    "no-live-logs",  # serve no /p2pmesh/log/1.0.0, as a release before live logs
    "tamper-image",  # serve our images to workers with one layer damaged (issue 17)
)


def _opt_in(env: dict[str, str], var: str, allowed: tuple[str, ...], hint: str) -> str | None:
    """A misbehaviour switch: honoured only together with ``P2PMESH_ALLOW_FAULTS=1``."""
    value = env.get(var)
    if not value:
        return None
    if env.get("P2PMESH_ALLOW_FAULTS") != "1":
        raise ConfigError(
            f"{var} is set but P2PMESH_ALLOW_FAULTS=1 is not: refusing to start", hint=hint
        )
    if value not in allowed:
        raise ConfigError(f"{var}={value!r}: must be one of {', '.join(allowed)}")
    return value


RING_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def read_fault(env: dict[str, str]) -> str | None:
    """``P2PMESH_FAULT``: deliberate misbehaviour for tests and demos.

    ``collude:RING`` makes this node one of a ring of colluders named ``RING``, which share
    their awards out of band (files in ``P2PMESH_RING_DIR``) and return the same wrong output
    whenever the ring holds a strict majority of the replicas it knows of (daemon/jobs.py), the
    simulator's ring rule (simulations/behaviours.py).
    """
    value = env.get("P2PMESH_FAULT", "")
    kind, sep, ring = value.partition(":")
    if kind == "collude" and sep:
        if not RING_KEY.match(ring):
            raise ConfigError("P2PMESH_FAULT=collude:RING: RING must be 1..64 of A-Z a-z 0-9 _ -")
        _opt_in({**env, "P2PMESH_FAULT": "collude"}, "P2PMESH_FAULT", ("collude",), _FAULT_HINT)
        return value
    return _opt_in(env, "P2PMESH_FAULT", FAULTS, _FAULT_HINT)


_FAULT_HINT = "faults are for tests and demos only"


BENCH_EXECUTORS = ("instant",)


def read_bench_executor(env: dict[str, str]) -> str | None:
    """``P2PMESH_BENCH_EXECUTOR=instant``: results without running anything (adapters/instant.py).

    A node that reports work it never did is a fault, so it needs ``P2PMESH_ALLOW_FAULTS=1``.
    """
    return _opt_in(
        env,
        "P2PMESH_BENCH_EXECUTOR",
        BENCH_EXECUTORS,
        "the benchmark executor runs no job; it is for benchmarks only",
    )


def read_swarm_key(path: Path) -> bytes:
    """The key in a swarm key file, or one ``ConfigError`` line naming the file and the
    problem (never the key's bytes). The file must be a regular file only we may read."""
    try:
        st = path.stat()
        if not path.is_file():
            raise ConfigError(f"swarm key {path}: not a regular file")
        if st.st_mode & 0o077:
            # As with the node's own key (home.py): a secret others can read is not one.
            raise ConfigError(
                f"swarm key {path} is accessible by other users (mode {st.st_mode & 0o777:o})",
                hint=f"run: chmod 600 {path}",
            )
        if st.st_size > MAX_FILE_BYTES:
            raise ConfigError(
                f"swarm key {path}: the file is over {MAX_FILE_BYTES} bytes: not a swarm key"
            )
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"swarm key {path}: {exc.strerror or exc}") from None
    try:
        return parse_swarm_key(data)
    except SwarmKeyError as exc:
        raise ConfigError(
            f"swarm key {path}: {exc}",
            hint="make one with `p2pmesh swarm-key new FILE`",
        ) from None


def _swarm_key_path(home: Path, flags: dict[str, Any], cfg: dict[str, Any]) -> Path | None:
    if flags.get("swarm_key"):
        return Path(flags["swarm_key"]).expanduser()
    if cfg.get("swarm_key"):
        given = Path(cfg["swarm_key"]).expanduser()
        return given if given.is_absolute() else home / given
    return None


def _relay_limits(cfg: dict[str, Any]) -> RelayLimits:
    d = RelayLimits()
    try:
        return RelayLimits(
            reservations=int(cfg.get("relay_reservations", d.reservations)),
            circuits=int(cfg.get("relay_circuits", d.circuits)),
            circuit_bytes=int(cfg.get("relay_circuit_mb", d.circuit_bytes >> 20)) << 20,
            circuit_duration_s=int(cfg.get("relay_circuit_minutes", d.circuit_duration_s // 60))
            * 60,
        )
    except ValidationError as exc:
        raise ConfigError(f"config: {exc}") from None


def build_settings(home: Path, flags: dict[str, Any]) -> Settings:
    """``flags`` holds only what was given on the command line (None/empty = not given)."""
    cfg = read_config(home)

    def pick(flag: str, key: str, default: Any) -> Any:
        v = flags.get(flag)
        if v not in (None, [], ()):
            return v
        return cfg.get(key, default)

    s = Settings(
        home=home,
        listen=tuple(pick("listen", "listen", list(DEFAULT_LISTEN))),
        bootstrap=tuple(pick("bootstrap", "bootstrap", [])),
        mdns=bool(cfg.get("mdns", True)) and not flags.get("no_mdns", False),
        work=bool(cfg.get("work", True)) and not flags.get("no_work", False),
        price=int(pick("price", "price", 1)),
        max_jobs=int(pick("max_jobs", "max_jobs", 2)),
        allow_images=tuple(pick("allow_image", "allow_image", [])),
        record_ttl_s=int(pick("record_ttl", "record_ttl_s", 300)),
        use_shipped_bootstrap=bool(cfg.get("use_shipped_bootstrap", True))
        and not flags.get("no_shipped_bootstrap", False),
        tui=not flags.get("no_tui", False),
        spot_check=float(pick("spot_check", "spot_check", 0.10)),
        credit_base=int(pick("credit_base", "credit_base", 100)),
        connection_grace_s=int(pick("connection_grace", "connection_grace_s", 5)),
        recover_window_s=int(pick("recover_window", "recover_window_s", 30)),
        recover=bool(flags.get("recover", False)),
        prefix_diversity=bool(cfg.get("prefix_diversity", True))
        and not flags.get("no_prefix_diversity", False),
        sortition=bool(cfg.get("sortition", True)) and not flags.get("no_sortition", False),
        newcomer_share=float(pick("newcomer_share", "newcomer_share", 0.1)),
        newcomer_checks=int(pick("newcomer_checks", "newcomer_checks", 3)),
        hidden_replicas=float(pick("hidden_replicas", "hidden_replicas", 0.10)),
        proof_exclusion=float(pick("proof_exclusion", "proof_exclusion", 0.5)),
        http=str(pick("http", "http", DEFAULT_HTTP)),
        http_public=bool(cfg.get("http_public", False)) or bool(flags.get("http_public", False)),
        relay="off" if flags.get("no_relay") else str(pick("relay", "relay", "auto")),
        relay_limits=_relay_limits(cfg),
        pull=bool(cfg.get("pull", True)) and not flags.get("no_pull", False),
        cache_gb=float(pick("cache_gb", "cache_gb", 10.0)),
        swarm_key=(key_path := _swarm_key_path(home, flags, cfg)),
        swarm_psk=read_swarm_key(key_path) if key_path is not None else None,
        fault=read_fault(dict(os.environ)),
        fault_after=int(os.environ.get("P2PMESH_FAULT_AFTER", "0") or 0),
        fault_slow_s=float(os.environ.get("P2PMESH_FAULT_SLOW_S", "200") or 200),
        bench_executor=read_bench_executor(dict(os.environ)),
    )
    if s.relay not in RELAY_MODES:
        raise ConfigError(f"relay: {s.relay!r} must be one of {', '.join(RELAY_MODES)}")
    if s.price < 0:
        raise ConfigError("price must be >= 0")
    if s.max_jobs < 0:
        raise ConfigError("max_jobs must be >= 0")
    if not 10 <= s.record_ttl_s <= 3600:
        raise ConfigError("record_ttl_s must be in [10, 3600]")
    if not 1 <= s.connection_grace_s <= 600:
        raise ConfigError("connection_grace_s must be in [1, 600]")
    if not 5 <= s.recover_window_s <= 3600:
        raise ConfigError("recover_window_s must be in [5, 3600]")
    if not 0.0 <= s.spot_check <= 1.0:
        raise ConfigError("spot_check must be between 0 and 1")
    if not 0.0 <= s.newcomer_share <= 1.0:
        raise ConfigError("newcomer_share must be between 0 and 1")
    if not 0 <= s.newcomer_checks <= 1000:
        raise ConfigError("newcomer_checks must be in [0, 1000]")
    if not 0.0 <= s.hidden_replicas <= 1.0:
        raise ConfigError("hidden_replicas must be between 0 and 1")
    if not 0.0 <= s.cache_gb <= 100_000:
        raise ConfigError("cache_gb must be in [0, 100000]")
    if not 0.0 < s.proof_exclusion <= 100.0:
        raise ConfigError("proof_exclusion must be in (0, 100]")
    if len(s.allow_images) > 64 or any(not 0 < len(g) <= 256 for g in s.allow_images):
        raise ConfigError("allow_image: at most 64 patterns of 1..256 characters")
    bound = parse_http_addr(s.http)
    if bound is not None and not is_loopback(bound[0]) and not s.http_public:
        raise ConfigError(
            f"http: {s.http} is not a loopback address",
            hint="the status page and /metrics need no login; add --http-public "
            "(config: http_public = true) to serve them to other machines anyway",
        )
    for a in (*s.listen, *s.bootstrap):
        if not a.startswith("/"):
            raise ConfigError(f"not a multiaddr: {a!r}")
    for a in s.bootstrap:
        if "/p2p/" not in a:
            raise ConfigError(f"bootstrap address must end in /p2p/<peer id>: {a!r}")
    if s.swarm_psk is None and os.environ.get("LIBP2P_FORCE_PNET") == "1":
        # The pnet spec's safeguard against a private node that would join the open network.
        raise ConfigError(
            "LIBP2P_FORCE_PNET=1 but no swarm key: refusing to start an open node",
            hint="give --swarm-key FILE or swarm_key in config.toml",
        )
    if s.swarm_psk is not None:
        for a in s.listen:
            if "/quic" in a or "/udp/" in a:
                # QUIC encrypts below us: there is no raw byte stream for the PSK layer.
                raise ConfigError(f"a private mesh (swarm_key) listens on TCP only, not {a!r}")
    return s
