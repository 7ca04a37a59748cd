"""Annealing mechanics shared by simulated annealing and parallel tempering (private: both import
from here): L2L's nine cooling schedules (Kirkpatrick et al. 1983; Luke 2005) and the chains
with their Gaussian proposals and Metropolis acceptance (Metropolis et al. 1953).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from l2ljax.core import Space, check_positive_int
from l2ljax.rows import Rows

Array = jax.Array


# --------------------------------------------------------------------------- cooling schedules


def _geometric(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return T0 * decay**k


def _logarithmic(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return T0 / (1.0 + decay * jnp.log1p(k))


def _linear_multiplicative(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return T0 / (1.0 + decay * k)


def _quadratic_multiplicative(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return T0 / (1.0 + decay * k**2)


def _linear_additive(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return Tn + (T0 - Tn) * ((n - k) / n)


def _quadratic_additive(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return Tn + (T0 - Tn) * ((n - k) / n) ** 2


def _exponential_additive(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return Tn + (T0 - Tn) / (1.0 + jnp.exp(2.0 * jnp.log(T0 - Tn) / n * (k - n / 2.0)))


def _trigonometric_additive(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return Tn + (T0 - Tn) * (1.0 + jnp.cos(k * jnp.pi / n)) / 2.0


_SCHEDULES: dict[str, Callable[..., Array]] = {
    "default": _geometric,
    "logarithmic": _logarithmic,
    "exponential": _geometric,
    "linear_multiplicative": _linear_multiplicative,
    "quadratic_multiplicative": _quadratic_multiplicative,
    "linear_additive": _linear_additive,
    "quadratic_additive": _quadratic_additive,
    "exponential_additive": _exponential_additive,
    "trigonometric_additive": _trigonometric_additive,
}

COOLING_SCHEDULES: tuple[str, ...] = tuple(_SCHEDULES)
"""Canonical names of the nine cooling schedules of L2L."""

ADDITIVE_SCHEDULES: tuple[str, ...] = tuple(name for name in COOLING_SCHEDULES if name.endswith("_additive"))
"""The schedules that cool from T0 to Tn over ``n_iteration`` steps."""


def cooling_schedule_name(schedule: Any) -> str:
    """The canonical name of a schedule given by name (any case, L2L's ``ADDAPTIVE`` spelling
    accepted) or as a member of L2L's ``AvailableCoolingSchedules`` enum."""
    name = getattr(schedule, "name", schedule)
    if isinstance(name, str):
        canonical = name.strip().lower().replace("addaptive", "additive")
        if canonical in _SCHEDULES:
            return canonical
    raise ValueError(f"unknown cooling schedule {schedule!r}: choose one of {', '.join(COOLING_SCHEDULES)} "
                     "(any case; L2L's *_ADDAPTIVE spelling is accepted)")


def temperature(schedule: str, t: Array | int, T0: Array | float, Tn: Array | float, decay: Array | float,
                n_iteration: int | None = None) -> Array:
    """Temperature of ``schedule`` after ``t`` cooling steps (a pure, jittable function).

    ``T0``: start temperature; ``Tn``: end temperature (additive schedules); ``decay``: α of the
    multiplicative schedules; ``n_iteration``: horizon n of the additive schedules (required for
    them; t is clipped to [0, n], so they stay at T(n) after n). Arguments broadcast (e.g. one
    value per chain); the result is float32 (float64 under ``jax_enable_x64``).
    """
    name = cooling_schedule_name(schedule)
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    k = jnp.asarray(t, dtype)
    n = 0.0
    if name in ADDITIVE_SCHEDULES:
        if n_iteration is None:
            raise ValueError(f"cooling schedule {name!r} needs n_iteration (the number of generations "
                             "over which it cools from T0 to Tn)")
        n = float(check_positive_int(n_iteration, "n_iteration"))
        k = jnp.clip(k, 0.0, n)
    T0, Tn, decay = (jnp.asarray(v, dtype) for v in (T0, Tn, decay))
    return _SCHEDULES[name](k, T0, Tn, decay, n)


def schedule_problem(schedule: str, T0: float, Tn: float, decay: float) -> str | None:
    """Why these (concrete) parameters do not give a positive, non-increasing schedule; None if they do."""
    name = cooling_schedule_name(schedule)
    if not (np.isfinite(T0) and T0 > 0):
        return f"T0 must be finite and > 0, got {T0}"
    if name in ("default", "exponential"):
        if not 0 < decay <= 1:
            return f"the decay of the {name!r} schedule must lie in (0, 1], got {decay}"
    elif name not in ADDITIVE_SCHEDULES:
        if not decay >= 0:
            return f"the decay of the {name!r} schedule must be >= 0, got {decay}"
    elif not 0 < Tn <= T0:
        return f"the {name!r} schedule needs 0 < Tn <= T0, got T0 = {T0}, Tn = {Tn}"
    elif name == "exponential_additive" and not T0 - Tn > 1:
        return (f"the 'exponential_additive' schedule cools only when T0 - Tn > 1 (its exponent has "
                f"ln(T0 - Tn)), got T0 = {T0}, Tn = {Tn}")
    return None


def check_n_iteration(schedules: Sequence[str], n_iteration: int | None, owner: str) -> int | None:
    """``n_iteration`` is required (a positive int) when any schedule is additive."""
    if n_iteration is not None:
        return check_positive_int(n_iteration, "n_iteration")
    additive = sorted({s for s in schedules if s in ADDITIVE_SCHEDULES})
    if additive:
        raise ValueError(f"{owner}: cooling schedule {', '.join(additive)} needs n_iteration "
                         "(the number of generations over which it cools from T0 to Tn)")
    return None


# --------------------------------------------------------------------------- the chains


class AnnealingState(NamedTuple):
    """Chains of simulated annealing (also the chains of parallel tempering).

    x:               (n, dim) current point of every chain.
    score:           (n,) its score (−inf until a finite one is accepted).
    step:            () number of cooling steps so far (= number of ``tell`` calls).
    key:             PRNG key for the acceptance draws.
    acceptance_rate: () fraction of the last generation's proposals that were accepted.
    """

    x: Array
    score: Array
    step: Array
    key: Array
    acceptance_rate: Array


def init_chains(space: Space, key: Array, x0: Array, n: int, rows: Rows | None = None) -> AnnealingState:
    """Chain 0 at ``x0``, chains 1..n−1 at independent draws of ``space.sample``; scores −inf.

    ``rows``: only these chains (a shard's rows, :mod:`l2ljax.rows`), each as in the whole set."""
    k_points, k_state = jax.random.split(key)
    if rows is None or rows.whole:
        others = jax.vmap(space.sample)(jax.random.split(k_points, n - 1)).astype(x0.dtype)
        x = jnp.concatenate([x0[None], others])
    else:
        keys = jax.random.split(k_points, n - 1)
        keys = rows.own(jnp.concatenate([keys[:1], keys]))  # chain j > 0: key j−1
        drawn = jax.vmap(space.sample)(keys).astype(x0.dtype)
        x = jnp.where((rows.indices() == 0)[:, None], x0[None], drawn)
    count = x.shape[0]
    return AnnealingState(space.clip(x), jnp.full(count, -jnp.inf, x0.dtype), jnp.array(0, jnp.int32), k_state,
                          jnp.array(0.0, x0.dtype))


def propose(key: Array, x: Array, noisy_step: Array, temperatures: Array, rows: Rows | None = None) -> Array:
    """x + N(0, I) · noisy_step · T, with one temperature per chain (``(n,)`` or scalar).

    ``rows``: chain j's noise from ``fold_in(key, j)``, the same however the chains are split."""
    z = jax.random.normal(key, x.shape, x.dtype) if rows is None else rows.normal(key, x.shape[1], x.dtype)
    scale = (noisy_step * jnp.broadcast_to(temperatures, x.shape[:1]))[:, None]
    return x + (z * scale).astype(x.dtype)


def metropolis(chains: AnnealingState, proposals: Array, proposal_score: Array, temperatures: Array,
               rows: Rows | None = None) -> AnnealingState:
    """Accept each proposal if it scores at least as well, else with prob exp((f' − f)/T).

    Non-finite proposal scores are never accepted. Advances ``step`` and the key. ``rows``: these
    chains are a shard's rows (the acceptance draws are those of the whole set; the rate is global).
    """
    key, k_accept = jax.random.split(chains.key)
    if rows is None:
        u = jax.random.uniform(k_accept, chains.score.shape)
    else:  # (n,) uniforms are small: draw the whole set's, keep this shard's
        u = rows.own(jax.random.uniform(k_accept, (rows.total_rows,)))
    finite = jnp.isfinite(proposal_score)
    gain = jnp.where(finite, proposal_score - chains.score, -jnp.inf)  # +inf when the chain has no score yet
    accept = finite & ((gain >= 0) | (u < jnp.exp(jnp.minimum(gain / temperatures, 0.0))))
    return AnnealingState(
        x=jnp.where(accept[:, None], proposals, chains.x),
        score=jnp.where(accept, proposal_score, chains.score).astype(chains.score.dtype),
        step=chains.step + 1,
        key=key,
        acceptance_rate=(jnp.mean(accept.astype(chains.acceptance_rate.dtype)) if rows is None else
                         rows.total(jnp.sum(accept.astype(chains.acceptance_rate.dtype))) / rows.total_rows),
    )
