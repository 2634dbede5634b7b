"""``p2pmesh``: the command line. Every command except ``up`` talks only to the local daemon.

Exit codes: 0 success; 1 a failure with a one-line reason on stderr; 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pmesh import __version__
from p2pmesh.cli import client, views
from p2pmesh.cli import jobs as jobs_cli
from p2pmesh.cli.console import make_console
from p2pmesh.daemon.home import resolve_home
from p2pmesh.errors import ConfigError, DaemonNotRunning, MeshError


def _add_home(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    # SUPPRESS on subcommands: `p2pmesh --home X peers` must not be reset by the subparser.
    p.add_argument(
        "--home",
        default=None if top else argparse.SUPPRESS,
        help="node home (default: $P2PMESH_HOME or ~/.p2pmesh)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pmesh", description="A peer-to-peer compute mesh with no central server."
    )
    parser.add_argument("--version", action="version", version=f"p2pmesh {__version__}")
    _add_home(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser("up", help="run this node in the foreground")
    _add_home(up)
    up.add_argument("--listen", action="append", metavar="MULTIADDR", help="repeatable")
    up.add_argument("--bootstrap", action="append", metavar="MULTIADDR", help="repeatable")
    up.add_argument("--no-mdns", action="store_true", help="no local-network discovery")
    up.add_argument(
        "--no-relay",
        action="store_true",
        help="never relay for peers behind a NAT (same as --relay off; config: relay)",
    )
    up.add_argument(
        "--relay",
        choices=("auto", "off", "always"),
        help="circuit relay service: auto (default: while this node is reachable), off, always",
    )
    up.add_argument("--no-tui", action="store_true", help="JSON log lines instead of the live view")
    up.add_argument(
        "--no-shipped-bootstrap",
        action="store_true",
        help="ignore the bootstrap list shipped with p2pmesh",
    )
    up.add_argument(
        "--check",
        action="store_true",
        help="print the hardware profile and what is missing, then exit",
    )
    up.add_argument("--price", type=int, help="credits asked per job (config: price)")
    up.add_argument("--max-jobs", type=int, help="concurrent jobs (config: max_jobs)")
    up.add_argument(
        "--allow-image",
        action="append",
        metavar="GLOB",
        help="image pattern this node will run, repeatable (config: allow_image)",
    )
    up.add_argument("--no-work", action="store_true", help="never run jobs (config: work)")
    up.add_argument(
        "--no-pull",
        action="store_true",
        help="never pull a missing image from a registry; get it from peers only (config: pull)",
    )
    up.add_argument(
        "--cache-gb",
        type=float,
        metavar="N",
        help="keep fetched images and inputs for later jobs within N GB, least recently used "
        "first out (config: cache_gb)",
    )
    up.add_argument(
        "--credit-base",
        type=int,
        metavar="N",
        help="credits any peer may owe before it has earned (config: credit_base)",
    )
    up.add_argument(
        "--no-sortition",
        action="store_true",
        help="offer every job to every fitting peer, however many (config: sortition)",
    )
    up.add_argument(
        "--no-prefix-diversity",
        action="store_true",
        help="let replicas of one job share a network prefix (config: prefix_diversity)",
    )
    up.add_argument(
        "--newcomer-share",
        type=float,
        metavar="F",
        help="chance that one slot of an award goes to a bidder new here, by lottery per "
        "prefix (config: newcomer_share)",
    )
    up.add_argument(
        "--newcomer-checks",
        type=int,
        metavar="N",
        help="passed checks here before a bidder is established; 0 turns the newcomer rule off "
        "(config: newcomer_checks)",
    )
    up.add_argument(
        "--hidden-replicas",
        type=float,
        metavar="F",
        help="share of checked jobs given one replica more than their redundancy, which no "
        "worker can see (config: hidden_replicas)",
    )
    up.add_argument(
        "--proof-exclusion",
        type=float,
        metavar="W",
        help="total weight of wrong-result proofs that excludes a worker (config: proof_exclusion)",
    )
    up.add_argument(
        "--spot-check",
        type=float,
        metavar="F",
        help='share of "auto" jobs on a credible worker re-run elsewhere (config: spot_check)',
    )
    up.add_argument(
        "--connection-grace",
        type=int,
        metavar="S",
        help="seconds a worker's closed connection may take to come back before its job is "
        "re-awarded (config: connection_grace_s)",
    )
    up.add_argument(
        "--recover",
        action="store_true",
        help="set a damaged state.db aside (kept) and rebuild the ledger from the mesh",
    )
    up.add_argument(
        "--recover-window",
        type=int,
        metavar="S",
        help="with --recover: seconds to fetch our own chain before signing anything "
        "(config: recover_window_s)",
    )
    up.add_argument(
        "--http",
        metavar="ADDR",
        help="HOST:PORT of the status page, /metrics and /api (default 127.0.0.1:8484, the next "
        "free port if taken; port 0: any free port; off: none) (config: http)",
    )
    up.add_argument(
        "--http-public",
        action="store_true",
        help="allow --http on a non-loopback address (config: http_public)",
    )
    up.add_argument(
        "--swarm-key",
        metavar="FILE",
        help="join only the private mesh of this pre-shared key (/key/swarm/psk/1.0.0/ "
        "file; config: swarm_key)",
    )
    up.add_argument(
        "--record-ttl",
        type=int,
        metavar="S",
        help="capability record lifetime in seconds (config: record_ttl_s)",
    )

    idp = sub.add_parser("id", help="this node's peer ID, public key and addresses")
    _add_home(idp)
    idp.add_argument("--json", action="store_true")

    peers = sub.add_parser("peers", help="the peers this node knows, from their signed records")
    _add_home(peers)
    peers.add_argument("--json", action="store_true")
    peers.add_argument("--watch", action="store_true", help="update live until Ctrl-C")

    jobs_cli.add_parsers(sub, _add_home)

    bal = sub.add_parser("balance", help="credits: balance, credit limit, earned, spent, pending")
    _add_home(bal)
    bal.add_argument("--json", action="store_true")

    led = sub.add_parser("ledger", help="the replicated ledger: blocks, balances, audit")
    _add_home(led)
    led.add_argument("--peer", metavar="ID", help="only this author's chain (ID or its end)")
    led.add_argument("--verify", action="store_true", help="check everything; exit 1 if invalid")
    led.add_argument("--json", action="store_true")

    rep = sub.add_parser("reputation", help="reputation scores and the evidence behind them")
    _add_home(rep)
    rep.add_argument("peer", nargs="?", help="peer ID (or its last characters)")
    rep.add_argument("--json", action="store_true")

    from p2pmesh.simulations.cli import add_parser as add_sim_parser

    add_sim_parser(sub)

    sk = sub.add_parser("swarm-key", help="make or inspect a private mesh's swarm key file")
    sk_sub = sk.add_subparsers(dest="swarm_key_command", metavar="ACTION", required=True)
    sk_new = sk_sub.add_parser("new", help="write a fresh random key to FILE (mode 0600)")
    sk_new.add_argument("file", metavar="FILE")
    sk_show = sk_sub.add_parser("show", help="check FILE and print its fingerprint (not the key)")
    sk_show.add_argument("file", metavar="FILE")
    sk_show.add_argument("--json", action="store_true")

    status = sub.add_parser("status", help="this node's state, peers and recent events")
    _add_home(status)
    status.add_argument("--json", action="store_true")
    return parser


def _home(args: argparse.Namespace) -> Path:
    return resolve_home(getattr(args, "home", None))


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def cmd_up(args: argparse.Namespace) -> int:
    from p2pmesh.cli.up import run_up

    return run_up(args, _home(args))


def cmd_id(args: argparse.Namespace) -> int:
    result = client.request(_home(args), "id")
    if args.json:
        _print_json(result)
    else:
        print(f"peer ID     {result['peer_id']}")
        print(f"public key  {result['public_key']}")
        for a in result["addrs"]:
            print(f"address     {a}")
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    home = _home(args)
    if args.json:
        _print_json(client.request(home, "peers"))
        return 0
    console = make_console()
    if not args.watch:
        console.print(views.peers_table(client.request(home, "peers"), time.time()))
        return 0
    from rich.live import Live

    with Live(console=console, refresh_per_second=2, screen=False) as live:
        try:
            while True:
                live.update(views.peers_table(client.request(home, "peers"), time.time()))
                time.sleep(1.0)
        except KeyboardInterrupt:
            return 0


def cmd_status(args: argparse.Namespace) -> int:
    snap = client.request(_home(args), "status")
    if args.json:
        _print_json(snap)
    else:
        console = make_console()
        console.print(views.dashboard(snap, time.time(), width=console.width))
    return 0


def _sim(args: argparse.Namespace) -> int:
    from p2pmesh.simulations.cli import cmd_sim

    return cmd_sim(args)


def cmd_balance(args: argparse.Namespace) -> int:
    b = client.request(_home(args), "balance")
    if args.json:
        _print_json(b)
        return 0
    print(f"balance       {b['balance']:>8} credits")
    print(f"credit limit  {b['credit_limit']:>8}  (may go down to -{b['credit_limit']})")
    print(f"earned        {b['earned']:>8}  in {b['payments_in']} payment(s)")
    print(f"spent         {b['spent']:>8}  in {b['payments_out']} payment(s)")
    print(f"pending       {b['pending']:>8}  proposed, not yet agreed")
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    from rich.table import Table

    doc = client.request(_home(args), "ledger", {"peer_id": args.peer, "verify": bool(args.verify)})
    ok = True
    if args.verify:
        v = doc["verify"]
        ok = bool(v["ok"])
    if args.json:
        _print_json(doc)
        return 0 if ok else 1
    console = make_console()
    t = Table(title="Balances (derived from the chains)")
    for col in ("peer", "balance", "limit", "earned", "spent", "pending", "excluded"):
        t.add_column(col, justify="left" if col == "peer" else "right")
    for peer, b in sorted(doc["balances"].items(), key=lambda kv: -kv[1]["balance"]):
        t.add_row(
            views.short_id(peer),
            str(b["balance"]),
            str(b["credit_limit"]),
            str(b["earned"]),
            str(b["spent"]),
            str(b["pending"]),
            "yes" if b["excluded"] else "",
        )
    console.print(t)
    for author, blocks in doc["chains"].items():
        console.print(f"chain {views.short_id(author)}: {len(blocks)} block(s)")
        for blk in blocks[-10:]:
            other = blk["payee"] if blk["kind"] == "proposal" else blk["payer"]
            console.print(
                f"  #{blk['seq']:<4} {blk['kind']:<9} {blk['amount']:>4} cr  "
                f"job {blk['job_id'][:12]}  with {views.short_id(other)}  "
                f"{blk['hash'][7:19]}"
            )
    if args.verify:
        v = doc["verify"]
        console.print(
            f"verified {v['blocks']} block(s) in {v['chains']} chain(s), "
            f"{v['fraud_proofs']} fraud proof(s); balances sum to {v['balances_sum']}"
        )
        for p in v["problems"]:
            console.print(f"[red]INVALID[/red] {p}", markup=True)
    return 0 if ok else 1


def cmd_reputation(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    result = client.request(_home(args), "reputation", {"peer_id": args.peer})
    if args.json:
        _print_json(result)
        return 0
    console = make_console()
    rows = result if isinstance(result, list) else [result]
    t = Table(title="Reputation (Beta prior 1:9, 7-day half-life)")
    cols = (
        "peer",
        "reputation",
        "credibility",
        "good",
        "bad",
        "checks ok",
        "checks failed",
        "here",
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "peer" else "right")
    for r in rows:
        t.add_row(
            views.short_id(r["peer_id"]),
            f"{r['reputation']:.3f}",
            f"{r['credibility']:.4f}",
            f"{r['good']:.1f}",
            f"{r['bad']:.1f}",
            f"{r['checks_passed']:.1f}",
            f"{r['checks_failed']:.1f}",
            _standing(r.get("newcomer")),
        )
    console.print(t)
    if not isinstance(result, list):
        for item in result["evidence"][-20:]:
            when = time.strftime("%H:%M:%S", time.gmtime(item["at"]))
            console.print(
                Text(
                    f"  {when}  {item['kind']:<10} weight {item['weight']:<6} "
                    f"job {item['job'][:12]}  from {item['source'][-8:]}"
                )
            )
    return 0


def _standing(doc: Any) -> str:
    """Established (ranked by score) or newcomer (drawn by lottery) at this node (§8.9)."""
    if not isinstance(doc, dict) or doc.get("rule") != "on":
        return "–"
    if doc.get("established"):
        return "established"
    return f"new {doc.get('progress', 0)}/{doc.get('checks_needed', '?')}"


def cmd_swarm_key(args: argparse.Namespace) -> int:
    from p2pmesh.core.swarmkey import fingerprint, format_swarm_key
    from p2pmesh.daemon.settings import read_swarm_key

    path = Path(args.file).expanduser()
    if args.swarm_key_command == "new":
        key = os.urandom(32)
        try:
            # O_EXCL: never overwrite a key (a mesh's members would be locked out); 0600 from
            # the first byte, not chmod after writing.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(f"{path} exists; not overwriting a swarm key") from None
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(format_swarm_key(key))
        print(f"wrote {path} (mode 0600), swarm key fingerprint {fingerprint(key)}")
        print("copy it to each member's node and start them with `p2pmesh up --swarm-key FILE`")
        return 0
    key = read_swarm_key(path)
    if getattr(args, "json", False):
        _print_json({"file": str(path), "swarm_key_fingerprint": fingerprint(key)})
    else:
        print(f"{path}: a valid swarm key, fingerprint {fingerprint(key)}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "reputation": cmd_reputation,
    "sim": lambda a: _sim(a),
    "balance": cmd_balance,
    "ledger": cmd_ledger,
    "up": cmd_up,
    "id": cmd_id,
    "peers": cmd_peers,
    "status": cmd_status,
    "swarm-key": cmd_swarm_key,
    "offer": lambda a: jobs_cli.cmd_offer(a, _home(a)),
    "jobs": lambda a: jobs_cli.cmd_jobs(a, _home(a)),
    "job": lambda a: jobs_cli.cmd_job(a, _home(a)),
    "logs": lambda a: jobs_cli.cmd_logs(a, _home(a)),
    "cancel": lambda a: jobs_cli.cmd_cancel(a, _home(a)),
    "connect": lambda a: jobs_cli.cmd_connect(a, _home(a)),
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except DaemonNotRunning as exc:
        print(f"p2pmesh: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        hint = f" ({exc.hint})" if exc.hint else ""
        print(f"p2pmesh: {exc}{hint}", file=sys.stderr)
        return 2
    except MeshError as exc:
        print(f"p2pmesh: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
