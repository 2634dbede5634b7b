"""A small state-vector quantum simulation: a GHZ state on n qubits followed by a quantum
Fourier transform, with measurement probabilities written to /out/probs.json.

The state is a complex array of shape (2,) * n, qubit 0 the most significant bit of a basis
index. For the GHZ state (|0…0> + |1…1>)/sqrt(2) the QFT gives, in closed form,

    P(k) = (1 + cos(2 pi k / 2**n)) / 2**n

so the script also reports how far the simulation is from that answer: a self-check a
requester can read without trusting the worker's arithmetic alone.

Probabilities are rounded to 12 decimal places and keys are sorted. Phases go through exp and
cos, whose last bit may differ between CPUs, so replicas are compared numerically (validation
mode "numeric") rather than byte for byte.
"""

import argparse
import json
import math

import numpy as np

H = np.array([[1.0, 1.0], [1.0, -1.0]], dtype=complex) / math.sqrt(2.0)
DECIMALS = 12


def apply_1q(state: np.ndarray, gate: np.ndarray, q: int) -> np.ndarray:
    return np.moveaxis(np.tensordot(gate, state, axes=([1], [q])), 0, q)


def cnot(state: np.ndarray, control: int, target: int) -> np.ndarray:
    state = state.copy()
    where = [slice(None)] * state.ndim
    where[control] = 1
    sub = state[tuple(where)]  # a view without the control axis
    axis = target if target < control else target - 1
    sub[...] = np.flip(sub, axis=axis).copy()
    return state


def cphase(state: np.ndarray, a: int, b: int, theta: float) -> np.ndarray:
    state = state.copy()
    where = [slice(None)] * state.ndim
    where[a] = 1
    where[b] = 1
    state[tuple(where)] *= complex(math.cos(theta), math.sin(theta))
    return state


def ghz(n: int) -> np.ndarray:
    state = np.zeros((2,) * n, dtype=complex)
    state[(0,) * n] = 1.0
    state = apply_1q(state, H, 0)
    for q in range(1, n):
        state = cnot(state, q - 1, q)
    return state


def qft(state: np.ndarray) -> np.ndarray:
    n = state.ndim
    for j in range(n):
        state = apply_1q(state, H, j)
        for k in range(j + 1, n):
            state = cphase(state, k, j, math.pi / 2 ** (k - j))
    # The textbook circuit leaves the qubits in reverse order; undo it.
    return np.transpose(state, tuple(reversed(range(n))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--qubits", type=int, default=10)
    parser.add_argument("--out", default="/out/probs.json")
    args = parser.parse_args()
    n = args.qubits
    dim = 2**n
    probs = np.abs(qft(ghz(n)).reshape(dim)) ** 2
    k = np.arange(dim)
    exact = (1.0 + np.cos(2.0 * np.pi * k / dim)) / dim
    max_error = float(np.max(np.abs(probs - exact)))
    # + 0.0 turns a -0.0 from rounding into 0.0, so no replica writes "-0.0" where another
    # writes "0.0".
    rounded = [round(float(p), DECIMALS) + 0.0 for p in probs]
    top = sorted(range(dim), key=lambda i: (-rounded[i], i))[:5]
    result = {
        "circuit": f"ghz({n}) then qft({n})",
        "qubits": n,
        "probabilities": rounded,
        "total_probability": round(float(np.sum(probs)), DECIMALS),
        "max_abs_error_vs_closed_form": round(max_error, DECIMALS) + 0.0,
        "matches_closed_form": max_error < 1e-12,
        "most_likely": [{"state": format(i, f"0{n}b"), "probability": rounded[i]} for i in top],
    }
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(json.dumps(result, sort_keys=True, indent=1) + "\n")


if __name__ == "__main__":
    main()
