"""The bootstrap-node profile: which ``p2pmesh up`` flags a long-lived bootstrap node runs with."""

from __future__ import annotations

# A bootstrap node relays discovery and gossip; it must not spend its CPU on jobs, and it has no
# terminal to draw a live view on.
BOOTSTRAP_FLAGS = ("--no-work", "--no-tui", "--no-mdns")


def bootstrap_argv(extra: list[str]) -> list[str]:
    flags = [f for f in BOOTSTRAP_FLAGS if f not in extra]
    return ["up", *flags, *extra]
