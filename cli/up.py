"""``p2pmesh up``: run the daemon in the foreground, with a live view on a terminal."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import trio

from p2pmesh.adapters import hardware
from p2pmesh.cli import views
from p2pmesh.cli.console import make_console
from p2pmesh.core.swarmkey import fingerprint
from p2pmesh.daemon.home import ensure_home
from p2pmesh.daemon.settings import build_settings

TUI_REFRESH_S = 1.0


def run_check(home: Path, work: bool, swarm_psk: bytes | None = None) -> int:
    ensure_home(home)
    prof = hardware.profile(home, check_docker=work)
    problems = hardware.readiness(prof, work_enabled=work)
    fp = fingerprint(swarm_psk) if swarm_psk is not None else None
    if sys.stdout.isatty():
        make_console().print(views.profile_table(hardware.profile_to_dict(prof), problems, fp))
    else:
        doc = {
            "profile": hardware.profile_to_dict(prof),
            "problems": problems,
            "ready": not problems,
            "private": fp is not None,
            "swarm_key_fingerprint": fp,
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    return 1 if problems else 0


def run_up(args: argparse.Namespace, home: Path) -> int:
    flags = {
        "listen": args.listen,
        "bootstrap": args.bootstrap,
        "no_mdns": args.no_mdns,
        "no_tui": args.no_tui,
        "no_shipped_bootstrap": args.no_shipped_bootstrap,
        "price": args.price,
        "max_jobs": args.max_jobs,
        "allow_image": args.allow_image,
        "no_work": args.no_work,
        "record_ttl": args.record_ttl,
        "spot_check": args.spot_check,
        "hidden_replicas": args.hidden_replicas,
        "proof_exclusion": args.proof_exclusion,
        "credit_base": args.credit_base,
        "connection_grace": args.connection_grace,
        "recover_window": args.recover_window,
        "recover": args.recover,
        "no_prefix_diversity": args.no_prefix_diversity,
        "no_sortition": args.no_sortition,
        "newcomer_share": args.newcomer_share,
        "newcomer_checks": args.newcomer_checks,
        "http": args.http,
        "http_public": args.http_public,
        "swarm_key": args.swarm_key,
        "no_relay": args.no_relay,
        "relay": args.relay,
        "no_pull": args.no_pull,
        "cache_gb": args.cache_gb,
    }
    ensure_home(home)
    settings = build_settings(home, flags)
    if args.check:
        return run_check(home, settings.work, settings.swarm_psk)

    # Import late: libp2p costs ~0.7 s of CPU to import, which `p2pmesh peers` need not pay.
    from p2pmesh.daemon.runner import Daemon, EventLog, quiet_libp2p_logging, run_until_signal

    quiet_libp2p_logging()
    tui = settings.tui and sys.stdout.isatty()
    if settings.http_public and tui:
        # Without the live view the daemon's own warning is a log line on stderr already.
        print(
            f"p2pmesh: warning: --http-public: {settings.http} serves this node's status, peers, "
            "jobs and ledger to anyone who can reach it",
            file=sys.stderr,
        )
    log = EventLog(json_lines=not tui)
    daemon = Daemon(settings, log)

    if not tui:
        trio.run(run_until_signal, daemon, None)
        return 0

    from rich.live import Live

    console = make_console()

    def start_tui(d: Daemon) -> None:
        async def loop() -> None:
            with Live(console=console, refresh_per_second=2, screen=False, transient=False) as live:
                while True:
                    try:
                        w, h = console.size
                        live.update(views.dashboard(d.snapshot(), time.time(), width=w, height=h))
                    except Exception as exc:  # a drawing bug must never stop the node
                        d.log("error", "live view failed", error=repr(exc))
                    await trio.sleep(TUI_REFRESH_S)

        assert d.nursery is not None
        d.nursery.start_soon(loop)

    trio.run(run_until_signal, daemon, start_tui)
    return 0
