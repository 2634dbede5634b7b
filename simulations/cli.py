"""``p2pmesh sim SCENARIO``: run a simulation and print its numbers.

    p2pmesh sim SCENARIO [--peers N] [--jobs M] [--seed S] [--fraction F] [--json] [--plot FILE.png]
                         [--redundancy K|auto] [--target-error E] [--offer-fanout N]
                         [--head-fanout N] [--sybil-prefixes N] [--sybil-price N]
                         [--newcomer-share F] [--newcomer-checks N]
    p2pmesh sim all ...      every scenario in turn, one table row each

A progress bar goes to stderr; the summary table (or, with ``--json``, one JSON document with
``scenario``, ``peers``, ``jobs``, ``seed`` and the metric keys of ``metrics.METRIC_KEYS``) to
stdout. For ``all`` the document is ``{"scenario": "all", "peers", "jobs", "seed", "results":
[one such document per scenario]}``. ``--plot`` needs matplotlib (``pip install
'p2pmesh[plot]'``); without it the command says so and exits 2 before simulating anything.

Exit codes: 0 success; 1 the run ended with a broken invariant (the ledger does not sum to zero,
or the core raised); 2 bad usage.

Wiring into the main CLI: ``add_parser(subparsers)`` adds the ``sim`` subcommand and returns its
parser; ``cmd_sim(args)`` runs it from the parsed namespace. ``run_cli(argv)`` is the standalone
entry point (``python -m p2pmesh.simulations``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from typing import Any

from p2pmesh.core.node import NodeConfig
from p2pmesh.simulations.behaviours import HONEST_PRICE
from p2pmesh.simulations.metrics import METRIC_KEYS, Report
from p2pmesh.simulations.network import NetConfig
from p2pmesh.simulations.scenarios import RING_PLACEMENTS, SCENARIOS, SYBIL_PREFIXES, run

_NET = NetConfig()  # defaults shown in --help
ALL = "all"
PLOT_HINT = "--plot needs matplotlib, which is not installed: pip install 'p2pmesh[plot]'"


def _redundancy(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an integer 1..9 or 'auto'") from None
    if not 1 <= k <= 9:
        raise argparse.ArgumentTypeError("must be an integer 1..9 or 'auto'")
    return k


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number in [0, 1]") from None
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError("must be a number in [0, 1]")
    return f


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a positive integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return n


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be an integer >= 0") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be an integer >= 0")
    return n


def configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``sim`` arguments to ``p`` (a subparser or a standalone parser)."""
    p.add_argument(
        "scenario",
        choices=(*SCENARIOS, ALL),
        metavar="SCENARIO",
        help=", ".join(SCENARIOS) + f", or {ALL} (each in turn, one table)",
    )
    p.add_argument("--peers", type=_positive, default=200, metavar="N", help="default 200")
    p.add_argument("--jobs", type=_positive, default=500, metavar="M", help="default 500")
    p.add_argument("--seed", type=int, default=1, metavar="S", help="default 1")
    p.add_argument(
        "--fraction",
        type=_fraction,
        default=None,
        metavar="F",
        help="share of peers with the scenario's behaviour (Sybils: extra identities per "
        "honest peer; partition: share on one side); default per scenario",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--plot", metavar="FILE.png", help="latency CDF and earnings Lorenz curve")
    p.add_argument("--redundancy", type=_redundancy, default=2, metavar="K|auto", help="default 2")
    p.add_argument("--target-error", type=float, default=None, metavar="E", help='for "auto" jobs')
    p.add_argument(
        "--offer-fanout",
        type=_non_negative,
        default=_NET.offer_fanout,
        metavar="N",
        help=f"peers each offer reaches (default {_NET.offer_fanout})",
    )
    p.add_argument(
        "--head-fanout",
        type=_non_negative,
        default=_NET.head_fanout,
        metavar="N",
        help=f"peers each ledger head reaches (default {_NET.head_fanout})",
    )
    p.add_argument(
        "--sybil-prefixes",
        type=_positive,
        default=SYBIL_PREFIXES,
        metavar="N",
        help=f"network prefixes the sybil swarm comes from (default {SYBIL_PREFIXES})",
    )
    p.add_argument(
        "--ring-placement",
        choices=RING_PLACEMENTS,
        default="spread",
        help="colluders: each ring member in a prefix of its own (spread, the worst case and "
        "the default) or the ring in --sybil-prefixes prefixes (concentrated)",
    )
    p.add_argument(
        "--sybil-price",
        type=_non_negative,
        default=HONEST_PRICE,
        metavar="N",
        help=f"what the sybil swarm bids (default {HONEST_PRICE}, the honest price)",
    )
    p.add_argument(
        "--newcomer-share",
        type=_fraction,
        default=None,
        metavar="F",
        help=f"every node's newcomer_share (default {NodeConfig().newcomer_share})",
    )
    p.add_argument(
        "--newcomer-checks",
        type=_non_negative,
        default=None,
        metavar="N",
        help=f"every node's newcomer_checks; 0 turns the newcomer rule off "
        f"(default {NodeConfig().newcomer_checks})",
    )
    p.add_argument(
        "--node-set",
        type=_node_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a NodeConfig setting for every simulated node (e.g. hidden_replicas=0); repeatable",
    )
    return p


def _node_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` for a NodeConfig field, VALUE parsed as the field's type."""
    import dataclasses

    from p2pmesh.core.node import NodeConfig

    key, sep, value = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(NodeConfig)}
    if not sep or key not in fields:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY a NodeConfig field, got {text!r}"
        )
    default = getattr(NodeConfig(), key)
    try:
        if isinstance(default, bool):
            if value not in ("true", "false"):
                raise ValueError(value)
            return key, value == "true"
        return key, type(default)(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{key}: {value!r} is not a {type(default).__name__}"
        ) from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sim`` to the main CLI's subparsers; dispatch the parsed args to ``cmd_sim``."""
    return configure(
        subparsers.add_parser(
            "sim", help="simulate a mesh of many peers running the real protocol core"
        )
    )


def build_parser() -> argparse.ArgumentParser:
    return configure(
        argparse.ArgumentParser(
            prog="p2pmesh sim",
            description="Simulate a mesh of many peers running the real protocol core.",
        )
    )


def run_cli(argv: list[str] | None = None) -> int:
    """Standalone entry point: parse ``argv`` and run. Returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or bad usage (2)
        return int(exc.code or 0)
    return cmd_sim(args)


def cmd_sim(args: argparse.Namespace) -> int:
    from p2pmesh.cli.console import make_console

    if args.plot and args.scenario == ALL:
        print("p2pmesh: --plot draws one scenario; name it instead of 'all'", file=sys.stderr)
        return 2
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print(f"p2pmesh: {PLOT_HINT}", file=sys.stderr)
        return 2
    net = NetConfig(offer_fanout=args.offer_fanout, head_fanout=args.head_fanout)
    kwargs: dict[str, Any] = {
        "peers": args.peers,
        "jobs": args.jobs,
        "seed": args.seed,
        "fraction": args.fraction,
        "redundancy": args.redundancy,
        "target_error": args.target_error,
        "net": net,
        "sybil_prefixes": args.sybil_prefixes,
        "sybil_price": args.sybil_price,
        "ring_placement": args.ring_placement,
        "newcomer_share": args.newcomer_share,
        "newcomer_checks": args.newcomer_checks,
    }
    if args.node_set:
        kwargs["node"] = dict(args.node_set)
    err = make_console(stderr=True)
    if args.scenario == ALL:
        return _run_all(args, kwargs, err)
    try:
        report = _run_with_progress(args.scenario, kwargs, err)
    except ValueError as exc:
        print(f"p2pmesh: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=False))
    else:
        make_console().print(summary_table(report))
    if args.plot:
        plot(report, args.plot)
        err.print(f"plot written to {args.plot}")
    if _broken(report):
        print(f"p2pmesh: invariant broken: {_broken(report)}", file=sys.stderr)
        return 1
    return 0


def _broken(report: Report) -> str:
    if not report.ledger_zero_sum:
        return "ledger does not sum to zero"
    return "core raised" if report.details.get("core_errors") else ""


def _run_all(args: argparse.Namespace, kwargs: dict[str, Any], err: Any) -> int:
    """Every scenario with the same size and seed (each with its own default fraction)."""
    from p2pmesh.cli.console import make_console

    reports: list[Report] = []
    for name in SCENARIOS:
        try:
            reports.append(_run_with_progress(name, kwargs, err))
        except ValueError as exc:
            print(f"p2pmesh: {name}: {exc}", file=sys.stderr)
            return 2
    if args.json:
        doc = {
            "scenario": ALL,
            "peers": args.peers,
            "jobs": args.jobs,
            "seed": args.seed,
            "results": [r.to_json() for r in reports],
        }
        print(json.dumps(doc, indent=2))
    else:
        make_console().print(all_table(reports, args.peers, args.jobs, args.seed))
    broken = [f"{r.scenario}: {_broken(r)}" for r in reports if _broken(r)]
    if broken:
        print("p2pmesh: invariant broken: " + "; ".join(broken), file=sys.stderr)
        return 1
    return 0


ALL_COLUMNS = (
    ("accepted_wrong_rate", "wrong"),
    ("inconclusive_rate", "inconcl."),
    ("mean_redundancy", "replicas"),
    ("latency_p50_s", "p50 s"),
    ("latency_p99_s", "p99 s"),
    ("utilisation", "util."),
    ("messages_per_job", "msgs/job"),
    ("gini_honest_earnings", "Gini"),
    ("reputation_auc", "AUC"),
    ("sybil_share", "Sybil"),
    ("honest_newcomer_first_award_p50_s", "new 1st s"),
    ("ledger_zero_sum", "ledger 0"),
    ("wall_s", "wall s"),
)


def all_table(reports: list[Report], peers: int, jobs: int, seed: int) -> Any:
    """One row per scenario (pure: reports in, renderable out)."""
    from rich.table import Table

    t = Table(title=f"p2pmesh sim all: {peers} peers, {jobs} jobs, seed {seed}")
    t.add_column("scenario")
    for _, header in ALL_COLUMNS:
        t.add_column(header, justify="right")
    for r in reports:
        t.add_row(r.scenario, *(_fmt(getattr(r, key)) for key, _ in ALL_COLUMNS))
    return t


def _run_with_progress(scenario: str, kwargs: dict[str, Any], console: Any) -> Report:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[jobs]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"sim {scenario}", total=1.0, jobs="")

        def progress(frac: float, done: int, total: int) -> None:
            bar.update(task, completed=frac, jobs=f"{done}/{total} jobs final")

        return run(scenario, progress=progress, **kwargs)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def summary_table(report: Report) -> Any:
    """The rich table printed after a run (pure: report in, renderable out)."""
    from rich.table import Table

    t = Table(
        title=f"p2pmesh sim {report.scenario}: {report.peers} peers, {report.jobs} jobs, "
        f"seed {report.seed}",
        show_header=True,
    )
    t.add_column("metric")
    t.add_column("value", justify="right")
    for key in METRIC_KEYS:
        t.add_row(key, _fmt(getattr(report, key)))
    d = report.details
    for key in ("states", "virtual_s", "cpu_s", "peak_rss_mb", "blob_bytes_per_job"):
        if key in d:
            value = d[key]
            t.add_row(
                f"[dim]{key}[/dim]",
                ", ".join(f"{k} {v}" for k, v in value.items())
                if isinstance(value, dict)
                else _fmt(value),
            )
    for key in (
        "free_riders_max_overspend",
        "forkers_known_by_mean_peers",
        "bad_share_of_earnings",
        "core_errors",
    ):
        if d.get(key):
            value = d[key]
            t.add_row(
                f"[dim]{key}[/dim]",
                "; ".join(f"{k} ×{v}" for k, v in value.items())
                if isinstance(value, dict)
                else _fmt(value),
            )
    return t


def plot(report: Report, path: str) -> None:
    """Latency CDF and the Lorenz curve of honest earnings, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = sorted(report.series.get("latency_s", []))
    earn = sorted(report.series.get("honest_earnings", []))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    if lat:
        a.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))])
    a.set_xlabel("submit → final (virtual s)")
    a.set_ylabel("share of jobs")
    a.set_title("job latency")
    total = sum(earn)
    if earn and total > 0:
        acc = 0.0
        xs, ys = [0.0], [0.0]
        for i, e in enumerate(earn):
            acc += e
            xs.append((i + 1) / len(earn))
            ys.append(acc / total)
        b.plot(xs, ys, label=f"Gini {report.gini_honest_earnings:.3f}")
        b.plot([0, 1], [0, 1], linestyle=":", label="equality")
        b.legend()
    b.set_xlabel("share of honest workers")
    b.set_ylabel("share of earnings")
    b.set_title("honest earnings (Lorenz)")
    fig.suptitle(f"{report.scenario}: {report.peers} peers, {report.jobs} jobs, seed {report.seed}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
