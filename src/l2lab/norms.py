"""Weight statistics of the kernels: norms and sparsity. Pure numpy."""

from __future__ import annotations

import numpy as np

SPARSE_BELOW = 1e-3  # |w| under this counts as (near) zero
# |w| histogram bins: [0, 1e-6) holds the (near) exact zeros L1 makes, then four bins a
# decade up to 1, then [1, 1000]: log-spaced, so a spike at zero and a shift to small
# weights both show.
ABS_EDGES = np.concatenate([[0.0], 10.0 ** np.arange(-6.0, 0.01, 0.25), [1e3]])
QUANTILES = (0.1, 0.5, 0.9)  # of |w| over all kernels, logged every epoch


def kernels(model: object) -> dict[str, np.ndarray]:
    """Each conv/dense kernel by layer name, as float64 numpy arrays (biases excluded)."""
    network = getattr(model, "network", model)  # fit's device-resident wrapper trains a network inside
    return {layer.name: np.asarray(layer.kernel, dtype=np.float64)
            for layer in network.layers if hasattr(layer, "kernel")}


def weight_norms(ks: dict[str, np.ndarray]) -> dict[str, float]:
    """L2 norm of all kernels together under "total" (first: tables lead with it), then of each kernel."""
    squares = {name: float(np.sum(k * k)) for name, k in ks.items()}
    return {"total": float(np.sqrt(sum(squares.values()))), **{name: float(np.sqrt(s)) for name, s in squares.items()}}


def abs_histogram(kernel: np.ndarray) -> np.ndarray:
    """Counts of |w| in the ABS_EDGES bins, (len(ABS_EDGES) - 1,) int64."""
    counts, _ = np.histogram(np.minimum(np.abs(kernel), ABS_EDGES[-1]), bins=ABS_EDGES)
    return counts


def abs_quantiles(ks: dict[str, np.ndarray], qs: tuple[float, ...] = QUANTILES) -> dict[str, float]:
    """Quantiles of |w| over all kernels together, e.g. {"p50": 0.02}."""
    every = np.concatenate([np.abs(k).ravel() for k in ks.values()])
    return {f"p{round(q * 100)}": float(v) for q, v in zip(qs, np.quantile(every, qs))}


def sparsity(ks: dict[str, np.ndarray], below: float = SPARSE_BELOW) -> dict[str, float]:
    """Fraction of kernel weights with |w| < below, per layer and over all kernels ("total")."""
    small = {name: int(np.count_nonzero(np.abs(k) < below)) for name, k in ks.items()}
    sizes = {name: k.size for name, k in ks.items()}
    return {"total": sum(small.values()) / sum(sizes.values()), **{n: small[n] / sizes[n] for n in ks}}
