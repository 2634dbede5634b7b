import sys


def main() -> int:
    print("p2pmesh: CLI not built yet", file=sys.stderr)
    return 1
