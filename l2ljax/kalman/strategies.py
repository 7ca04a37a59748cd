r"""Strategy objects of ensemble Kalman inversion: processes, step-size schedulers, accelerators.

Each strategy is a small ``flax.struct`` pytree holding its configuration: continuous fields are
leaves (so they can live in an optimizer's ``Params``, be vmapped and checked), static fields are
not. They are used by the pure functions below and by
:class:`l2ljax.optimizers.enkf.EnsembleKalmanFilter`. Defaults are documented in
``docs/kalman.md``.

Processes (what one update does with ``U, G, y, Γ``):

- :class:`Inversion` — EKI (Iglesias, Law & Stuart 2013), :func:`l2ljax.kalman.eki_update`.
- :class:`TransformInversion` — ETKI (Huang, Huang, Reich & Stuart 2022), deterministic square
  root form, :func:`l2ljax.kalman.etki_update`; localization does not apply.
- :class:`TikhonovInversion` — TEKI (Chada, Stuart & Tong 2020): EKI on the problem augmented by
  the prior, :func:`l2ljax.kalman.tikhonov_augment`.

GNKI and UKI are not provided: UKI needs 2P + 1 sigma points per iteration (36,101 forward passes
for the 18,050 weights of the LOD CNN) and its P×P covariance; GNKI needs the prior's P×P
precision and an ensemble Jacobian per member. Neither fits network weights at J ≪ P.

Step-size schedulers (h, the Δt that divides Γ):

- :class:`FixedStep` — h = ``step_size`` × an optional schedule of the iteration.
- :class:`DataMisfitController` — Iglesias & Yang (2021), *Adaptive regularisation for ensemble
  Kalman inversion*, Inverse Problems 37:025008: with ``Φ_j = ½|Γ^{-½}(y − G_j)|²`` over the
  valid members and M data,

      h_n = min( max( M/(2 Φ̄), √(M/(2 Var Φ)) ),  T − t_n ),     t_{n+1} = t_n + h_n

  a Bayesian tempering: the steps sum to the algorithm time T = ``terminate_at`` (1: the
  posterior), after which the process terminates (``on_terminate='stop'``: no further updates)
  or goes on with the uncapped h (``'continue'``). See :func:`data_misfit_step`.

Accelerators (Nesterov-type momentum; Vernon, Bach & Dunbar 2025, *Nesterov acceleration for
ensemble Kalman inversion and variants*, arXiv:2501.08779). The forward map is evaluated at
``v_n = u_n + λ_n (u_n − u_{n−1})``, where ``u_n`` is the plain update of ``v_{n−1}``:

- :class:`NesterovAccelerator` — λ_n = θ_n(1/θ_{n−1} − 1), θ_0 = 1,
  θ_n = (−θ_{n−1}² + √(θ_{n−1}⁴ + 4θ_{n−1}²))/2 (Su, Boyd & Candès 2014); λ_1 = 0, λ_n → 1
  like 1 − 3/n. EKP's default and the most consistent variant (also in our tests).
- :class:`FirstOrderNesterovAccelerator` — λ_n = 1 − r/(n + 2), r = 3: the first-order form of
  the same schedule.
- :class:`ConstantNesterovAccelerator` — λ constant (0.9): fast on easy problems, but it can
  oscillate and diverge (no decay of the momentum).

Example::

    step, t, stop = data_misfit_step(G, y, 0.01, elapsed=t, terminate_at=1.0)
    U_new = eki_update(key, V, G, y, 0.01, step_size=step)
    lam, theta = NesterovAccelerator().coefficient(n, theta)
    V = accelerate(U_new, U_prev, lam)
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import struct

from l2ljax.kalman.eki import StrategyError, _Noise
from l2ljax.rows import Rows, everything

Array = jax.Array

__all__ = ["ConstantNesterovAccelerator", "DataMisfitController", "FirstOrderNesterovAccelerator", "FixedStep",
           "Inversion", "NesterovAccelerator", "NoAcceleration", "TikhonovInversion", "TransformInversion",
           "accelerate", "data_misfit_step", "misfit_potential"]


# --------------------------------------------------------------------------- processes


@struct.dataclass
class Inversion:
    """Ensemble Kalman inversion (EKI), stochastic or deterministic; the default process."""


@struct.dataclass
class TransformInversion:
    """Ensemble transform Kalman inversion (ETKI): exact Kalman mean and covariance update."""


@struct.dataclass
class TikhonovInversion:
    """Tikhonov EKI (TEKI): the prior N(prior_mean, prior_std² I) enters as extra data.

    ``prior_mean=None`` in the optimizer: the centre of the initial ensemble (x0).
    """

    prior_std: float = 1.0
    prior_mean: float | None = struct.field(pytree_node=False, default=None)


# --------------------------------------------------------------------------- step sizes


@struct.dataclass
class FixedStep:
    """h = the optimizer's ``step_size`` parameter (times its ``step_schedule``, if any)."""


@struct.dataclass
class DataMisfitController:
    """Adaptive step of Iglesias & Yang (2021), terminating when the steps sum to ``terminate_at``.

    terminate_at: algorithm time T > 0 (1: the Bayesian posterior; ``inf``: never terminate).
    on_terminate: 'stop' (no updates after T) or 'continue' (uncapped steps after T).
    """

    terminate_at: float = 1.0
    on_terminate: str = struct.field(pytree_node=False, default="stop")

    def __post_init__(self) -> None:
        if self.on_terminate not in ("stop", "continue"):
            raise StrategyError(f"on_terminate must be 'stop' or 'continue', got {self.on_terminate!r}")
        value = self.terminate_at
        if isinstance(value, int | float) and not value > 0:
            raise StrategyError(f"DataMisfitController needs terminate_at > 0 (an algorithm time), got {value}")


def misfit_potential(G: Array, y: Array, noise: float | Array, valid: Array | None = None) -> Array:
    """``Φ_j = ½ |Γ^{-½}(y − G_j)|²`` per member, (J,); NaN for invalid members."""
    G = jnp.asarray(G)
    noise = _Noise.scaled(jnp.asarray(noise, G.dtype), jnp.ones((), G.dtype), need_chol=True)
    r = noise.whiten(y - G)
    phi = 0.5 * jnp.sum(r * r, axis=1)
    ok = jnp.isfinite(phi) if valid is None else jnp.isfinite(phi) & valid
    return jnp.where(ok, phi, jnp.nan)


@partial(jax.jit, static_argnames="rows")
def _dmc(phi: Array, M: int | Array, elapsed: Array, terminate_at: Array, rows: Rows | None = None
         ) -> tuple[Array, Array]:
    rows = everything(phi.shape[0]) if rows is None else rows
    ok = jnp.isfinite(phi)
    n = jnp.maximum(rows.total(jnp.sum(ok)), 2)
    phi0 = jnp.where(ok, phi, 0.0)
    mean = rows.total(jnp.sum(phi0)) / n
    var = rows.total(jnp.sum(jnp.where(ok, (phi - mean) ** 2, 0.0))) / (n - 1)
    q = jnp.maximum(M / (2 * mean), jnp.sqrt(M / (2 * var)))
    return q, jnp.minimum(q, terminate_at - elapsed)


def data_misfit_step(G: Array, y: Array, noise: float | Array, *, elapsed: float | Array = 0.0,
                     terminate_at: float | Array = 1.0, valid: Array | None = None,
                     on_terminate: str = "stop") -> tuple[Array, Array, Array]:
    """The Iglesias–Yang step for outputs ``G`` (J, M): returns ``(h, new elapsed, terminated)``.

    ``terminated`` is True when ``elapsed`` has already reached ``terminate_at``; then h = 0
    with ``on_terminate='stop'``, else the uncapped h. ``noise`` as in :func:`eki_update`.
    """
    if on_terminate not in ("stop", "continue"):
        raise StrategyError(f"on_terminate must be 'stop' or 'continue', got {on_terminate!r}")
    G = jnp.asarray(G)
    phi = misfit_potential(G, y, noise, valid)
    elapsed = jnp.asarray(elapsed, G.dtype)
    terminate_at = jnp.asarray(terminate_at, G.dtype)
    q, capped = _dmc(phi, G.shape[1], elapsed, terminate_at)
    done = elapsed >= terminate_at
    h = jnp.where(done, 0.0 if on_terminate == "stop" else q, capped)
    h = jnp.where(jnp.isfinite(h), h, 0.0)  # no valid members: no step
    return h, elapsed + h, done


# --------------------------------------------------------------------------- accelerators


@struct.dataclass
class NoAcceleration:
    """Plain EKI: the forward map is evaluated at the updated ensemble."""

    def coefficient(self, n: Array, theta: Array) -> tuple[Array, Array]:
        return jnp.zeros_like(theta), theta


@struct.dataclass
class NesterovAccelerator:
    """Nesterov momentum with the θ recursion of Su, Boyd & Candès (2014); EKP's default."""

    def coefficient(self, n: Array, theta: Array) -> tuple[Array, Array]:
        """(λ_n, θ_n) from θ_{n−1} (θ_0 = 1); ``n`` unused."""
        b = theta * theta
        new = (-b + jnp.sqrt(b * b + 4 * b)) / 2
        return new * (1 / theta - 1), new


@struct.dataclass
class FirstOrderNesterovAccelerator:
    """Momentum λ_n = 1 − r/(n + 2) at update n = 1, 2, ... (λ_1 = 0 for r = 3)."""

    r: float = 3.0

    def coefficient(self, n: Array, theta: Array) -> tuple[Array, Array]:
        return jnp.maximum(1 - self.r / (n + 2.0), 0.0).astype(theta.dtype), theta


@struct.dataclass
class ConstantNesterovAccelerator:
    """Constant momentum λ ∈ [0, 1); can be unstable."""

    momentum: float = 0.9

    def coefficient(self, n: Array, theta: Array) -> tuple[Array, Array]:
        return jnp.asarray(self.momentum, theta.dtype), theta


def accelerate(U_new: Array, U_prev: Array, coefficient: float | Array) -> Array:
    """``v = u_new + λ (u_new − u_prev)``: the ensemble at which the forward map is evaluated next."""
    return U_new + coefficient * (U_new - U_prev)

