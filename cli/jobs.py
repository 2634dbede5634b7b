"""``p2pmesh offer | jobs | job | logs | cancel``: jobs from the requester's side."""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from p2pmesh import packing
from p2pmesh.cli import client
from p2pmesh.cli.console import make_console
from p2pmesh.core.jobspec import InputRef, job_digest, job_to_wire
from p2pmesh.errors import DaemonNotRunning, JobSpecError, MeshError, TransportError
from p2pmesh.jobfile import load_job_file, resolve_image

CONNECT_WAIT_S = 300.0  # `connect` right after `offer`: the auction and the inputs come first
FINAL = ("done", "failed", "timeout", "cancelled", "no-bids", "inconclusive")
POLL_S = 0.25
FOLLOW_RETRIES = 10  # ``logs --follow``: daemon requests in a row that may go unanswered
PAYING_WAIT_S = 10.0  # ``offer --wait`` shows a done job's payments being agreed, this long
STATE_STYLE = {
    "done": "green",
    "failed": "red",
    "timeout": "red",
    "cancelled": "yellow",
    "inconclusive": "yellow",
    "no-bids": "red",
    "bidding": "cyan",
    "awarded": "cyan",
    "running": "blue",
    "fetching": "blue",
}


def _local_refs(paths: dict[str, Path]) -> dict[str, InputRef]:
    refs = {}
    for name, p in sorted(paths.items()):
        if p.is_dir():
            data = packing.pack_dir(p, max_bytes=1 << 30)
            refs[name] = InputRef(packing.digest(data), len(data), "dir")
        else:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            refs[name] = InputRef("sha256:" + h.hexdigest(), p.stat().st_size, "file")
    return refs


def phase_text(job: dict[str, Any]) -> str:
    """What the job waits for, as the daemon put it (``running 12 s of 60 s timeout``,
    ``no bids yet: 7 peers known, 0 fit (…)``); the state for an older daemon."""
    phase = job.get("phase")
    if isinstance(phase, dict) and isinstance(phase.get("text"), str):
        return phase["text"]
    return str(job.get("state", "?"))


def _phase_name(job: dict[str, Any]) -> str:
    phase = job.get("phase")
    return str(phase.get("name")) if isinstance(phase, dict) else str(job.get("state"))


def phase_key(job: dict[str, Any]) -> str:
    """What must change for ``offer --wait`` without a terminal to print a new line: the
    phase, or its words, except for the clocks that tick in them."""
    phase = job.get("phase")
    name = phase.get("name") if isinstance(phase, dict) else None
    if name in ("running", "bidding"):
        return f"{name} {len([w for w in job.get('workers', []) if w.get('state') == 'reported'])}"
    return phase_text(job)


TAIL_LINES = 8  # of the log under ``offer --wait --follow``'s progress view


def log_tail(text: str, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log so far (a line still being written counts)."""
    return text.splitlines()[-lines:]


def progress_view(job: dict[str, Any], started: float, tail: list[str] | None = None) -> Group:
    state = job.get("state", "?")
    head = Text.assemble(
        ("job ", "bold"),
        (job.get("job_id", "")[:12], "bold"),
        "  ",
        (job.get("name", ""), ""),
        "  ",
        (state, STATE_STYLE.get(state, "")),
        f"  {time.monotonic() - started:5.1f}s",
    )
    t = Table(box=None, pad_edge=False)
    t.add_column("worker")
    t.add_column("price", justify="right")
    t.add_column("state")
    t.add_column("run", justify="right")
    for w in job.get("workers", []):
        res = w.get("result") or {}
        run = f"{res['run_s']:.2f}s" if res.get("run_s") is not None else ""
        t.add_row("…" + w["peer_id"][-8:], str(w["price"]), w.get("phase") or w["state"], run)
    info = Text(f"bids received: {job.get('bids_received', 0)}   round: {job.get('round', 0)}")
    parts: list[Any] = [head]
    if state not in FINAL or _phase_name(job) == "paying":
        parts.append(Text(phase_text(job), style=STATE_STYLE.get(state, "")))
    parts.append(info)
    service = job.get("service")
    if isinstance(service, dict):
        idle = service.get("idle_timeout_s")
        line = f"service: port {service.get('port')}, ends after {idle} s idle"
        if service.get("worker") and state not in FINAL:
            line += f"; reach it with: p2pmesh connect {job.get('job_id', '')[:12]}"
        parts.append(Text(line))
    if job.get("workers"):
        parts.append(t)
    if job.get("error"):
        parts.append(Text(job["error"], style="red"))
    if tail is not None:
        parts.append(Text("log", style="bold"))
        # Text, never markup: a log line is the job's to write.
        parts.extend(Text(line, style="dim", no_wrap=True, overflow="ellipsis") for line in tail)
    return Group(*parts)


SUBMIT_TIMEOUT_S = 600.0


def _engine_image_id(image: str) -> str | None:
    """The ID of ``image`` in the Docker engine this shell reaches (``DOCKER_HOST``); raises
    ``LookupError`` when no engine answers (the daemon then resolves it on its own)."""
    try:
        from p2pmesh.adapters.docker.images import Images

        return Images().image_id(image)
    except Exception as exc:
        raise LookupError(str(exc)) from None


def cmd_offer(args: argparse.Namespace, home: Path) -> int:
    job_path = Path(args.job).absolute()
    try:
        spec, paths = load_job_file(job_path)
    except JobSpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    if args.follow and not args.wait:
        print("p2pmesh: --follow needs --wait (or use: p2pmesh logs ID --follow)", file=sys.stderr)
        return 2
    try:
        spec = resolve_image(spec, _engine_image_id)
    except JobSpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    if args.dry_run:
        refs = _local_refs(paths)
        doc = {"job_digest": job_digest(spec, refs), "job": job_to_wire(spec, refs)}
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=repr) + "\n")
        return 0
    try:
        # Exporting an image the mesh has not seen from us yet takes a while (docker save).
        sub = client.request(
            home,
            "submit",
            {"job_file": str(job_path), "bid_window_s": args.bid_window, "image_id": spec.image_id},
            timeout=SUBMIT_TIMEOUT_S,
        )
    except MeshError as exc:
        if getattr(exc, "code", "") != JobSpecError.code:
            raise
        print(str(exc), file=sys.stderr)
        return 2
    job_id = sub["job_id"]
    if not args.wait:
        if args.json:
            sys.stdout.write(json.dumps(sub, indent=2) + "\n")
        else:
            print(job_id)
        return 0
    console = make_console(stderr=True)
    started = time.monotonic()
    job = client.request(home, "job", {"job_id": job_id})
    show = console.is_terminal and not args.json
    follow = _TailFollow(home, job_id) if args.follow else None
    live = (
        Live(
            progress_view(job, started, follow.tail if follow else None),
            console=console,
            refresh_per_second=8,
            transient=False,
        )
        if show
        else None
    )
    try:
        if live:
            live.start()
        last_key = None
        paying_until = float("inf")
        while True:
            if not live and not args.json and phase_key(job) != last_key:
                # Without a terminal: one line each time the phase (or why it waits) changes.
                print(f"{job_id[:12]} {phase_text(job)}", file=sys.stderr, flush=True)
                last_key = phase_key(job)
            if follow is not None:
                # Without a terminal the log goes to stderr as it comes, line by line.
                follow.poll(None if live else sys.stderr)
            if job["state"] in FINAL and (
                _phase_name(job) != "paying" or time.monotonic() > paying_until
            ):
                break
            if job["state"] in FINAL and paying_until == float("inf"):
                # Done: its payments are usually agreed within a second; say so, briefly.
                paying_until = time.monotonic() + PAYING_WAIT_S
            time.sleep(POLL_S)
            job = client.request(home, "job", {"job_id": job_id})
            if live:
                live.update(progress_view(job, started, follow.tail if follow else None))
    except KeyboardInterrupt:
        print(
            f"stopped waiting; the job goes on. Follow it with: p2pmesh job {job_id}",
            file=sys.stderr,
        )
        return 130
    finally:
        if follow is not None:
            follow.finish(None if live else sys.stderr)
            if live:
                live.update(progress_view(job, started, follow.tail))
        if live:
            live.stop()
    out_dir = Path(args.out) if args.out else Path("p2pmesh-results") / job_id
    exported = None
    if job.get("output_digest"):
        exported = _export(home, job_id, out_dir)
        job = exported["job"]
    if args.json:
        sys.stdout.write(json.dumps(job, indent=2, sort_keys=True) + "\n")
    else:
        state = job["state"]
        print(f"job {job_id}: {state}" + (f" ({job['error']})" if job.get("error") else ""))
        if exported:
            print(f"outputs: {exported['dest']}/outputs ({', '.join(exported['files']) or 'none'})")
            print(f"result:  {exported['dest']}/result.json")
    return 0 if job["state"] == "done" else 1


def _export(home: Path, job_id: str, out_dir: Path) -> dict[str, Any]:
    """The daemon unpacks the accepted outputs (checked when they were fetched, and unpacked
    with the same archive checks) into ``out_dir``: one code path for ``offer --wait --out``
    and ``job ID --out``."""
    return client.request(home, "export", {"job_id": job_id, "dest": str(out_dir.absolute())})


def _print_export(job_id: str, job: dict[str, Any], exported: dict[str, Any]) -> None:
    state = job["state"]
    print(f"job {job_id}: {state}" + (f" ({job['error']})" if job.get("error") else ""))
    print(f"outputs: {exported['dest']}/outputs ({', '.join(exported['files']) or 'none'})")
    print(f"result:  {exported['dest']}/result.json")


def cmd_jobs(args: argparse.Namespace, home: Path) -> int:
    jobs = client.request(home, "jobs")
    if args.json:
        sys.stdout.write(json.dumps(jobs, indent=2, sort_keys=True) + "\n")
        return 0
    t = Table(title=f"Jobs ({len(jobs)})")
    for col in ("job", "role", "name", "image", "state", "phase", "workers / requester", "price"):
        t.add_column(col)
    for j in jobs:
        if j["role"] == "requester":
            who = ", ".join("…" + w["peer_id"][-8:] for w in j["workers"])
            price = str(j.get("price_total", ""))
        else:
            who = "…" + j["requester"][-8:]
            price = str(j.get("price", ""))
        # What an open job of ours waits for (``job ID`` says why); nothing once it ended.
        name = _phase_name(j) if j["role"] == "requester" else ""
        t.add_row(
            j["job_id"][:12],
            j["role"],
            Text(j["name"]),
            Text(j["image"]),
            Text(j["state"], style=STATE_STYLE.get(j["state"], "")),
            Text(name if name != j["state"] else ""),
            who,
            price,
        )
    make_console().print(t)
    return 0


def cmd_job(args: argparse.Namespace, home: Path) -> int:
    job = client.request(home, "job", {"job_id": args.job_id})
    if args.out:
        # Any time after the job is done, also after a restart of this node: the accepted
        # outputs stay in the blob store, and the job document comes back from the database.
        if job["role"] != "requester":
            print(f"p2pmesh: job {job['job_id']} was not requested here", file=sys.stderr)
            return 2
        if not job.get("output_digest"):
            print(
                f"p2pmesh: job {job['job_id']} has no outputs yet (state {job['state']})",
                file=sys.stderr,
            )
            return 1
        exported = _export(home, job["job_id"], Path(args.out))
        if args.json:
            sys.stdout.write(json.dumps(exported["job"], indent=2, sort_keys=True) + "\n")
        else:
            _print_export(job["job_id"], exported["job"], exported)
        return 0 if exported["job"]["state"] == "done" else 1
    if args.json:
        sys.stdout.write(json.dumps(job, indent=2, sort_keys=True) + "\n")
        return 0
    console = make_console()
    # The head's clock: since the job was offered (the daemon's clock is this machine's).
    offered_ago = max(0.0, time.time() - float(job.get("created_at") or time.time()))
    console.print(
        progress_view(job, time.monotonic() - offered_ago)
        if job["role"] == "requester"
        else Text(json.dumps(job, indent=2))
    )
    for h in job.get("history", []):
        console.print(Text(f"  {time.strftime('%H:%M:%S', time.gmtime(h['at']))}  {h['event']}"))
    return 0


def cmd_logs(args: argparse.Namespace, home: Path) -> int:
    if args.follow:
        return _follow_logs(home, args.job_id)
    doc = client.request(home, "logs", {"job_id": args.job_id})
    if doc["log"] is None:
        print(f"p2pmesh: no logs yet for job {args.job_id} (state {doc['state']})", file=sys.stderr)
        return 1
    sys.stdout.write(doc["log"])
    return 0


class LogFollower:
    """Pulls a job's log through the daemon (``log-tail``), from the offset it reached: the
    daemon asks the worker, which holds each request up to a couple of seconds for new bytes,
    so a line reaches the follower about when the container writes it."""

    def __init__(self, home: Path, job_id: str) -> None:
        self.home, self.job_id = home, job_id
        self.offset = 0
        self.worker: str | None = None
        self.ended = False
        self.note = ""
        self.state = ""

    def step(self) -> tuple[bytes, str]:
        """The next bytes (maybe none) and a note for the user when it changed ("" if not)."""
        args: dict[str, Any] = {"job_id": self.job_id, "offset": self.offset}
        if self.worker:
            args["worker"] = self.worker
        doc = client.request(self.home, "log-tail", args)
        self.job_id, self.state = doc["job_id"], doc["state"]
        data = base64.b64decode(doc["data"])
        note = doc.get("note") or ""
        if doc.get("restart"):
            note = f"worker …{str(self.worker)[-8:]} is out of play; now its replacement's log"
        self.worker = doc.get("source") or self.worker
        self.offset, self.ended = int(doc["next"]), bool(doc["ended"])
        shown = note if note and note != self.note else ""
        self.note = note
        return data, shown


class _TailFollow:
    """``offer --wait --follow``: a thread pulls the log (each pull may wait a moment for new
    bytes at the worker) while the progress loop keeps its pace and shows the last lines."""

    def __init__(self, home: Path, job_id: str) -> None:
        self.follower = LogFollower(home, job_id)
        self.lock = threading.Lock()
        self.text = ""
        self.pending = ""  # bytes not yet shown on a piped stderr
        self.tail: list[str] = []
        self.thread = threading.Thread(target=self._run, name="p2pmesh-log-tail", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.follower.ended:
            try:
                data, _ = self.follower.step()
            except MeshError:
                return  # an older daemon, or it went away: the progress view goes on without
            if not data:
                time.sleep(1.0 if self.follower.note else POLL_S)
                continue
            chunk = data.decode(errors="replace")
            with self.lock:
                self.text = (self.text + chunk)[-64 * 1024 :]
                self.pending += chunk
                self.tail = log_tail(self.text)

    def poll(self, stream: Any, *, final: bool = False) -> None:
        """Write the whole lines that came since (all that came, when ``final``)."""
        if stream is None:
            return
        with self.lock:
            done, _, rest = self.pending.rpartition("\n")
            if final and rest:
                done, rest = f"{done}\n{rest}" if done else rest, ""
            self.pending = rest
        if done:
            stream.write("".join(f"log| {line}\n" for line in done.split("\n")))
            stream.flush()

    def finish(self, stream: Any, timeout: float = 5.0) -> None:
        self.thread.join(timeout)  # the last bytes, usually already in hand
        self.poll(stream, final=True)


def _follow_logs(home: Path, job_id: str) -> int:
    follower = LogFollower(home, job_id)
    out = sys.stdout.buffer
    got_any = False
    failures = 0
    try:
        while not follower.ended:
            try:
                data, note = follower.step()
                failures = 0
            except DaemonNotRunning:
                raise
            except TransportError as exc:
                # The daemon did not answer in time: ask again, from the same offset.
                failures += 1
                if failures > FOLLOW_RETRIES:
                    raise
                print(f"p2pmesh: {exc}; asking again", file=sys.stderr, flush=True)
                time.sleep(1.0)
                continue
            if note:
                print(f"p2pmesh: {note}", file=sys.stderr, flush=True)
            if data:
                # Written and flushed chunk by chunk, also into a pipe.
                out.write(data)
                out.flush()
                got_any = True
            elif not follower.ended:
                time.sleep(POLL_S if follower.note == "" else 1.0)
    except KeyboardInterrupt:
        return 130
    return 0 if got_any or not follower.note else 1


def cmd_cancel(args: argparse.Namespace, home: Path) -> int:
    client.request(home, "cancel", {"job_id": args.job_id})
    # A service is stopped, then reported and paid for: that takes its worker a little longer.
    deadline = time.monotonic() + 75
    job = client.request(home, "job", {"job_id": args.job_id})
    while job["state"] not in FINAL and time.monotonic() < deadline:
        time.sleep(0.2)
        job = client.request(home, "job", {"job_id": args.job_id})
    print(f"job {args.job_id}: {job['state']}")
    if job.get("service") is not None and job["state"] == "done":
        # A service ended by cancel is settled, not abandoned: its minutes are paid.
        print(f"session ended; paid {job.get('price_total', 0)} credit(s) for its minutes")
        return 0
    return 0 if job["state"] == "cancelled" else 1


def cmd_connect(args: argparse.Namespace, home: Path) -> int:
    """Open a local port that tunnels to a service job; stay until it ends or Ctrl-C."""
    req: dict[str, Any] = {"job_id": args.job_id, "listen": args.listen}
    if args.peer:
        req["peer"] = args.peer
    waited = time.monotonic() + CONNECT_WAIT_S
    while True:
        try:
            got = client.request(home, "connect", req, timeout=45.0)
            break
        except MeshError as exc:
            # Offered a moment ago: wait for the worker to start it rather than fail.
            if "not running yet" not in str(exc) or time.monotonic() > waited:
                raise
            if waited - time.monotonic() > CONNECT_WAIT_S - 1.5:
                print(f"waiting for the service to start: {exc}", file=sys.stderr, flush=True)
            time.sleep(1.0)
    job_id, where = got["job_id"], got["listen"]
    print(
        f"job {job_id[:12]}: listening on {where}, forwarded to the service on worker "
        f"{got['worker']} (Ctrl-C to stop)",
        flush=True,
    )
    try:
        while True:
            time.sleep(1.0)
            doc = client.request(home, "job", {"job_id": job_id}) if not args.peer else None
            if doc is not None and doc["state"] in FINAL:
                print(f"job {job_id[:12]}: {doc['state']}; the tunnel is closed", flush=True)
                return 0
    except KeyboardInterrupt:
        with contextlib.suppress(MeshError):
            client.request(home, "disconnect", {"job_id": job_id})
        print(f"job {job_id[:12]}: stopped listening on {where}", flush=True)
        return 0


def add_parsers(sub: Any, add_home: Any) -> None:
    offer = sub.add_parser("offer", help="offer a job to the mesh")
    add_home(offer)
    offer.add_argument("job", help="job file (JSON, schema_version 1; see docs/JOBS.md)")
    offer.add_argument("--wait", action="store_true", help="follow the job and fetch outputs")
    offer.add_argument("--out", metavar="DIR", help="outputs folder (default ./p2pmesh-results/ID)")
    offer.add_argument("--json", action="store_true", help="print the final job document")
    offer.add_argument(
        "--follow", action="store_true", help="with --wait: show the job's log as it runs"
    )
    offer.add_argument("--dry-run", action="store_true", help="validate and print the offer")
    offer.add_argument(
        "--bid-window", type=int, default=2, metavar="S", help="seconds to collect bids (default 2)"
    )
    jobs = sub.add_parser("jobs", help="jobs this node requested or ran")
    add_home(jobs)
    jobs.add_argument("--json", action="store_true")
    job = sub.add_parser("job", help="one job in detail")
    add_home(job)
    job.add_argument("job_id")
    job.add_argument("--json", action="store_true")
    job.add_argument(
        "--out", metavar="DIR", help="export the accepted outputs, log and result.json into DIR"
    )
    logs = sub.add_parser("logs", help="a job's container log (stdout and stderr)")
    add_home(logs)
    logs.add_argument("job_id")
    logs.add_argument(
        "--follow", action="store_true", help="stream the log while the job runs, until it ends"
    )
    cancel = sub.add_parser(
        "cancel", help="cancel a job and stop its containers (ends a service session)"
    )
    add_home(cancel)
    cancel.add_argument("job_id")
    connect = sub.add_parser(
        "connect", help="open a local port that tunnels to a running service job"
    )
    add_home(connect)
    connect.add_argument("job_id")
    connect.add_argument(
        "--listen",
        default="127.0.0.1:8888",
        metavar="HOST:PORT",
        help="loopback address to listen on (default 127.0.0.1:8888; port 0: any free one)",
    )
    connect.add_argument(
        "--peer",
        metavar="PEER_ID",
        help="the worker, for a job not requested from this node (it refuses all but the "
        "requester)",
    )
