"""Inner loops: benchmark functions (and, for Kalman methods, models on data)."""

from __future__ import annotations

from l2ljax.core import Optimizee
from l2ljax.optimizees.external import WorkerPool, worker_pool_optimizee

__all__ = ["WorkerPool", "function_optimizee", "worker_pool_optimizee"]


def function_optimizee(name: str, dim: int | None = None, noise_std: float = 0.0) -> Optimizee:
    """An L2L benchmark function as an optimizee: minimised (weight -1), clipped to its bounds.

    ``noise_std`` adds N(0, noise_std²) to every evaluation (L2L's noisy variants use 0.01).
    """
    import jax.numpy as jnp

    from l2ljax.optimizees import functions

    spec = functions.spec(name, dim)

    def fitness(x: jnp.ndarray, key: jnp.ndarray) -> jnp.ndarray:
        return spec.fn(x)

    return Optimizee.create(
        fitness, jnp.zeros(spec.dim, jnp.float32), lower=spec.lower, upper=spec.upper,
        weights=(-1.0,), noise_std=noise_std, name=f"{spec.name}-{spec.dim}d",
        info={"argmin": spec.argmin.tolist(), "minimum": float(spec.minimum)},
    )
