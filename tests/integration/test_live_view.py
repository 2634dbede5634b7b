"""The live view of a real ``p2pmesh up`` on an 80x24 terminal (a pseudo-terminal made here).

Checked: the frames drawn carry the node, its credits, the jobs panel, the peers and the
events; no line is wider than 80 columns and no frame is taller than the screen (a taller one
would scroll the terminal and smear the view); Ctrl-C stops the node with exit code 0.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
from mesh import p2pmesh_cmd

pytestmark = pytest.mark.integration

P2P_PORT = 47130
HTTP_PORT = 47170
COLS, ROWS = 80, 24
# CSI sequences (colours, cursor moves, erase) and the few other escapes rich writes.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>]")


def test_live_view_fits_an_80x24_terminal(tmp_path: Path) -> None:
    home = tmp_path / "node"
    home.mkdir(mode=0o700)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(COLS), "LINES": str(ROWS)}
    proc = subprocess.Popen(
        [
            *p2pmesh_cmd(),
            "up",
            "--home",
            str(home),
            "--no-mdns",
            "--no-shipped-bootstrap",
            "--no-work",
            "--listen",
            f"/ip4/127.0.0.1/tcp/{P2P_PORT}",
            "--http",
            f"127.0.0.1:{HTTP_PORT}",
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
        cwd=home,
    )
    os.close(slave)
    out = bytearray()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
            text = out.decode(errors="replace")
            # Two frames after the node listens: the view has redrawn with its first events.
            if text.count("node listening") >= 2 and "Jobs:" in text:
                break
        proc.send_signal(signal.SIGINT)
        end = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        rc = proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        os.close(master)
    text = out.decode(errors="replace")
    plain = ANSI.sub("", text).replace("\r", "")
    assert rc == 0, plain[-3000:]
    # The last whole frame: from the last top border of the node panel to the end.
    frame = plain[plain.rindex("╭─ p2pmesh node") :]
    lines = [line for line in frame.split("\n") if line.strip()]
    for want in (
        "Peer ID",
        "Credits 0 cr",
        "earned 0",
        "Jobs: 0 running here",
        "Peers (0",
        "Events (UTC)",
        f"http://127.0.0.1:{HTTP_PORT}/",
        "node listening",
    ):
        assert want in frame, f"{want!r} not in the last frame:\n{frame}"
    assert max(len(line) for line in lines) <= COLS, frame
    assert len(lines) < ROWS, frame
    assert "Traceback" not in plain, plain[-3000:]
