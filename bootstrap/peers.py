"""The shipped bootstrap list (``peers.txt`` beside this module)."""

from __future__ import annotations

from importlib import resources


def shipped_bootstrap() -> list[str]:
    text = resources.files("p2pmesh.bootstrap").joinpath("peers.txt").read_text()
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "/p2p/" in line:
            out.append(line)
    return out
