"""The bootstrap-node profile: which ``p2pmesh up`` flags a long-lived bootstrap node runs with."""

from __future__ import annotations

# A bootstrap node relays discovery and gossip; it must not spend its CPU on jobs, and it has no
# terminal to draw a live view on.
BOOTSTRAP_FLAGS = ("--no-work", "--no-tui", "--no-mdns")
# It always relays for peers behind a NAT (a bootstrap node is public by definition, and the
# first peer a NATed node meets): a limited circuit relay (PROTOCOL.md §2.3).
BOOTSTRAP_RELAY = ("--relay", "always")


def bootstrap_argv(extra: list[str]) -> list[str]:
    flags = [f for f in BOOTSTRAP_FLAGS if f not in extra]
    if "--relay" not in extra and "--no-relay" not in extra:
        flags += BOOTSTRAP_RELAY
    return ["up", *flags, *extra]
