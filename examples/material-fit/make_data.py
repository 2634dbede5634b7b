"""Regenerate data/stress_strain.csv: a synthetic tensile test of a steel-like alloy.

Not part of the job (only fit.py and the CSV are inputs). Ramberg–Osgood with E = 200 GPa,
a 0.2 % offset yield of 350 MPa and hardening exponent 8, plus ±1 % deterministic "scatter" so
the fit has something to do. No random numbers: the file is the same on every run.
"""

import math
from pathlib import Path

E_MPA = 200_000.0
YIELD_MPA = 350.0
N = 8.0


def main() -> None:
    lines = ["stress_mpa,strain"]
    for i in range(41):
        stress = 20.0 + 11.0 * i
        strain = stress / E_MPA + 0.002 * (stress / YIELD_MPA) ** N
        strain *= 1.0 + 0.01 * math.sin(1.7 * i + 0.3)
        lines.append(f"{stress:.1f},{strain:.8e}")
    out = Path(__file__).with_name("data") / "stress_strain.csv"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
