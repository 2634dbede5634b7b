"""``python -m p2pmesh.bootstrap``: a long-lived bootstrap node.

The same daemon as ``p2pmesh up``, with work execution off (it never bids or runs containers),
JSON logs instead of the live view, and mDNS off (a bootstrap node usually sits on a server).
Any other ``p2pmesh up`` flag may be added, e.g. ``--listen /ip4/0.0.0.0/tcp/4001``.
"""

from __future__ import annotations

import sys

from p2pmesh.bootstrap.profile import bootstrap_argv
from p2pmesh.cli.main import main

if __name__ == "__main__":
    sys.exit(main(bootstrap_argv(sys.argv[1:])))
