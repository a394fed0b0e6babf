"""Weight statistics of the kernels: norms and sparsity. Pure numpy."""

from __future__ import annotations

import numpy as np

SPARSE_BELOW = 1e-3  # |w| under this counts as (near) zero


def kernels(model: object) -> dict[str, np.ndarray]:
    """Each conv/dense kernel by layer name, as float64 numpy arrays (biases excluded)."""
    return {layer.name: np.asarray(layer.kernel, dtype=np.float64)
            for layer in model.layers if hasattr(layer, "kernel")}


def weight_norms(ks: dict[str, np.ndarray]) -> dict[str, float]:
    """L2 norm of all kernels together under "total" (first: tables lead with it), then of each kernel."""
    squares = {name: float(np.sum(k * k)) for name, k in ks.items()}
    return {"total": float(np.sqrt(sum(squares.values()))), **{name: float(np.sqrt(s)) for name, s in squares.items()}}


def sparsity(ks: dict[str, np.ndarray], below: float = SPARSE_BELOW) -> dict[str, float]:
    """Fraction of kernel weights with |w| < below, per layer and over all kernels ("total")."""
    small = {name: int(np.count_nonzero(np.abs(k) < below)) for name, k in ks.items()}
    sizes = {name: k.size for name, k in ks.items()}
    return {"total": sum(small.values()) / sum(sizes.values()), **{n: small[n] / sizes[n] for n in ks}}
