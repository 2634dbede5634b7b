"""Estimate pi by Monte-Carlo: the fraction of uniform points in the unit square that fall
inside the quarter circle, times four.

Deterministic by construction, so two honest workers write byte-identical /out/pi.json: the
generator is PCG64 seeded from the command line, points are drawn in fixed-size chunks, the
result is an integer count, and every float is written with a fixed number of digits.
"""

import argparse
import json
import math

import numpy as np

CHUNK = 1 << 20  # fixed, so the stream of draws does not depend on the machine's memory


def estimate(seed: int, samples: int) -> dict:
    rng = np.random.Generator(np.random.PCG64(seed))
    inside = 0
    remaining = samples
    while remaining:
        n = min(CHUNK, remaining)
        x = rng.random(n)
        y = rng.random(n)
        inside += int(np.count_nonzero(x * x + y * y < 1.0))
        remaining -= n
    p = inside / samples
    pi = 4.0 * p
    return {
        "seed": seed,
        "samples": samples,
        "inside": inside,
        "pi_estimate": float(f"{pi:.12g}"),
        "std_error": float(f"{4.0 * math.sqrt(p * (1.0 - p) / samples):.6g}"),
        "abs_error": float(f"{abs(pi - math.pi):.6g}"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--out", default="/out/pi.json")
    args = parser.parse_args()
    result = estimate(args.seed, args.samples)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(json.dumps(result, sort_keys=True, indent=2) + "\n")


if __name__ == "__main__":
    main()
