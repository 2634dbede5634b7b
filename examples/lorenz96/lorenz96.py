"""One member of a Lorenz-96 weather ensemble.

    dx_i/dt = (x_{i+1} - x_{i-2}) * x_{i-1} - x_i + F,   i = 0..N-1, cyclic

integrated with classical fourth-order Runge–Kutta from the rest state x_i = F plus a small
Gaussian perturbation drawn from (seed, member): each member of the ensemble starts from its
own nearby state, and the chaos of the model spreads them apart, as in a forecast ensemble.

Writes /out/state.npy (the final state, float64) and /out/summary.json. Only the seeded
generator and elementwise +, -, * touch the state; IEEE 754 rounds those the same way on every
CPU, and the summary uses NumPy's own fixed-order sums rather than BLAS (whose kernels differ
by CPU), so two honest workers with the same image write byte-identical files (validation
mode "exact").
"""

import argparse
import json

import numpy as np


def tendency(x: np.ndarray, forcing: float) -> np.ndarray:
    return (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + forcing


def integrate(x: np.ndarray, forcing: float, dt: float, steps: int) -> np.ndarray:
    half = dt / 2.0
    for _ in range(steps):
        k1 = tendency(x, forcing)
        k2 = tendency(x + half * k1, forcing)
        k3 = tendency(x + half * k2, forcing)
        k4 = tendency(x + dt * k3, forcing)
        x = x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--member", default="/in/member.json")
    parser.add_argument("--out", default="/out")
    args = parser.parse_args()
    with open(args.member, encoding="utf-8") as f:
        cfg = json.load(f)
    n, forcing = int(cfg["n"]), float(cfg["forcing"])
    dt, steps = float(cfg["dt"]), int(cfg["steps"])
    rng = np.random.default_rng([int(cfg["seed"]), int(cfg["member"])])
    x0 = forcing + float(cfg["perturbation"]) * rng.standard_normal(n)
    x = integrate(x0, forcing, dt, steps)
    np.save(f"{args.out}/state.npy", x)

    def sig(v: float) -> float:
        return float(f"{v:.12g}")

    summary = {
        "model": "lorenz96",
        "member": int(cfg["member"]),
        "seed": int(cfg["seed"]),
        "n": n,
        "forcing": forcing,
        "dt": dt,
        "steps": steps,
        "t_end": sig(dt * steps),
        "mean": sig(float(np.mean(x))),
        "std": sig(float(np.std(x))),
        "min": sig(float(np.min(x))),
        "max": sig(float(np.max(x))),
        "energy": sig(float(0.5 * np.sum(x * x))),
        "state_head": [sig(float(v)) for v in x[:4]],
    }
    with open(f"{args.out}/summary.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(summary, sort_keys=True, indent=2) + "\n")


if __name__ == "__main__":
    main()
