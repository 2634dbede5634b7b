"""``python -m p2pmesh.bootstrap.images [busybox] [python] [--force]``."""

from __future__ import annotations

import argparse
import sys
import time

from p2pmesh.errors import MeshError

from .build import IMAGES, ensure_images, image_exists


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m p2pmesh.bootstrap.images",
        description="Build the local p2pmesh images with docker import (skips existing ones).",
    )
    parser.add_argument(
        "names", nargs="*", metavar="IMAGE", help=f"{' | '.join(IMAGES)} (default: all)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(IMAGES))
    if unknown:
        parser.error(f"unknown image(s) {', '.join(unknown)}; known: {', '.join(IMAGES)}")
    names: list[str] = list(dict.fromkeys(args.names)) or list(IMAGES)
    try:
        for name in names:
            tag = IMAGES[name].tag
            if not args.force and image_exists(name):
                print(f"{tag}: present, skipped")
                continue
            print(f"{tag}: building...", flush=True)
            started = time.monotonic()
            ensure_images([name], force=args.force)
            print(f"{tag}: built in {time.monotonic() - started:.1f} s")
    except MeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
