"""Network namespaces for the NAT tests: a public segment, and home networks behind NAT routers.

Everything is made by the test and named with one prefix (``pmnat<pid>``), so teardown removes
exactly what this process made, also after a failure half-way through setup. Nothing touches the
host's own interfaces or routes: every address below lives only inside our namespaces.

    public segment 10.77.0.0/24 (a bridge in namespace PFX-pub; the relay listens on 10.77.0.1)
      ├─ router PFX-ra (wan 10.77.0.2, MASQUERADE) ── home 192.168.71.0/24 ── node PFX-na (.2)
      └─ router PFX-rb (wan 10.77.0.3, MASQUERADE) ── home 192.168.72.0/24 ── node PFX-nb (.2)

The routers know no route to each other's home networks, forward nothing inbound that
conntrack did not see go out first, and drop (not reset) what comes in unasked: as home NATs
do. Daemons run in a namespace through ``nsenter --net=…`` (``ip netns exec`` remounts /sys,
which hides the cgroups Docker needs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

PUBLIC_NET = "10.77.0"
RELAY_IP = f"{PUBLIC_NET}.1"


def missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")
    return res


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("nsenter", f"--net=/var/run/netns/{ns}", "--", *argv, check=check)


def ns_prefix(ns: str) -> list[str]:
    """What to put before a command to run it inside ``ns``."""
    return ["nsenter", f"--net=/var/run/netns/{ns}", "--"]


@dataclass
class NatLab:
    prefix: str
    # Router B maps each connection to a random port (a "symmetric" NAT, as many carrier-grade
    # NATs do): the port a peer predicts for a hole punch is then wrong, so only the relay works.
    symmetric_b: bool = False
    namespaces: list[str] = field(default_factory=list)

    @property
    def public(self) -> str:
        return f"{self.prefix}-pub"

    def home(self, side: str) -> str:
        return f"{self.prefix}-n{side}"

    def router(self, side: str) -> str:
        return f"{self.prefix}-r{side}"

    def home_ip(self, side: str) -> str:
        return f"192.168.{71 if side == 'a' else 72}.2"

    def wan_ip(self, side: str) -> str:
        return f"{PUBLIC_NET}.{2 if side == 'a' else 3}"

    def _ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")

    def _veth(self, a: str, ns_a: str, b: str, ns_b: str) -> None:
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        # Each end goes into its namespace at once: nothing stays among the host's interfaces.
        sh("ip", "link", "set", a, "netns", ns_a)
        sh("ip", "link", "set", b, "netns", ns_b)

    def build(self) -> None:
        p = self.prefix
        self._ns(self.public)
        in_ns(self.public, "ip", "link", "add", "br0", "type", "bridge")
        in_ns(self.public, "ip", "addr", "add", f"{RELAY_IP}/24", "dev", "br0")
        in_ns(self.public, "ip", "link", "set", "br0", "up")
        for side in ("a", "b"):
            router, home = self.router(side), self.home(side)
            self._ns(router)
            self._ns(home)
            wan, port = f"{p}w{side}", f"{p}p{side}"
            self._veth(wan, router, port, self.public)
            in_ns(self.public, "ip", "link", "set", port, "master", "br0")
            in_ns(self.public, "ip", "link", "set", port, "up")
            in_ns(router, "ip", "addr", "add", f"{self.wan_ip(side)}/24", "dev", wan)
            in_ns(router, "ip", "link", "set", wan, "up")
            lan, host = f"{p}l{side}", f"{p}h{side}"
            self._veth(lan, router, host, home)
            net = self.home_ip(side).rsplit(".", 1)[0]
            in_ns(router, "ip", "addr", "add", f"{net}.1/24", "dev", lan)
            in_ns(router, "ip", "link", "set", lan, "up")
            in_ns(home, "ip", "addr", "add", f"{self.home_ip(side)}/24", "dev", host)
            in_ns(home, "ip", "link", "set", host, "up")
            in_ns(home, "ip", "route", "add", "default", "via", f"{net}.1")
            in_ns(router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            random = ["--random-fully"] if side == "b" and self.symmetric_b else []
            in_ns(
                router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", wan,
                "-j", "MASQUERADE", *random,
            )  # fmt: skip
            # A home router: replies to what went out pass, nothing new comes in.
            in_ns(
                router, "iptables", "-A", "FORWARD", "-i", wan, "-m", "conntrack",
                "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT",
            )  # fmt: skip
            in_ns(router, "iptables", "-A", "FORWARD", "-i", wan, "-j", "DROP")
            # Nor does the router itself answer the outside: a SYN to a port it has no mapping
            # for is dropped, not reset (as home routers' WAN firewalls do). A reset would
            # abort a hole punch whose other half arrives a moment later.
            in_ns(
                router, "iptables", "-A", "INPUT", "-i", wan, "-m", "conntrack",
                "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT",
            )  # fmt: skip
            in_ns(router, "iptables", "-A", "INPUT", "-i", wan, "-j", "DROP")

    def teardown(self) -> list[str]:
        """Remove every namespace we made (their interfaces go with them); say what failed."""
        failed = []
        for name in reversed(self.namespaces):
            res = sh("ip", "netns", "delete", name, check=False)
            if res.returncode != 0:
                failed.append(f"{name}: {res.stderr.strip()}")
        self.namespaces.clear()
        return failed

    def leftovers(self) -> list[str]:
        """Namespaces or host interfaces with our prefix that still exist."""
        names = sh("ip", "netns", "list", check=False).stdout.split()
        links = sh("ip", "-o", "link", "show", check=False).stdout
        return [n for n in names if n.startswith(self.prefix)] + [
            line.split(":")[1].strip() for line in links.splitlines() if self.prefix in line
        ]


@contextlib.contextmanager
def nat_lab(prefix: str | None = None, *, symmetric_b: bool = False) -> Iterator[NatLab]:
    lab = NatLab(prefix or f"pmnat{os.getpid()}", symmetric_b=symmetric_b)
    try:
        lab.build()
        yield lab
    finally:
        failed = lab.teardown()
        if failed:
            raise RuntimeError("could not remove namespaces: " + "; ".join(failed))
