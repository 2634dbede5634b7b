"""One place that decides how wide output is."""

from __future__ import annotations

import sys

from rich.console import Console

# Piped output (logs, CI, `| less`) has no terminal width; 80 columns squashes the peers table.
PIPED_WIDTH = 140


def make_console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else PIPED_WIDTH)
