r"""Ensemble Kalman inversion in pure JAX: updates, strategies, localizers, minibatchers.

An ensemble ``U`` (J, P), forward outputs ``G`` (J, M), observation ``y`` (M,) and noise Γ::

    u_j ← u_j + C_up (C_pp + Γ/h)⁻¹ (y_j − G_j)          (Iglesias, Law & Stuart 2013)

- :mod:`l2ljax.kalman.eki` — the updates: :func:`eki_update` (stochastic/deterministic, scalar,
  diagonal or full Γ, ensemble or observation form, failed members, localization),
  :func:`eki_update_sequential` (LOD sample-sequential), :func:`etki_update` (ETKI),
  :func:`tikhonov_augment` (TEKI), :func:`inflate`, :func:`additive_inflation`.
- :mod:`l2ljax.kalman.strategies` — processes, step-size schedulers (fixed,
  :class:`DataMisfitController`), Nesterov accelerators.
- :mod:`l2ljax.kalman.localizers` — SEC, SECNice, SECFisher, Bernoulli dropout.
- :mod:`l2ljax.kalman.minibatch` — fixed and random minibatchers over an observation series.

The defaults of every strategy, and which to use when, are on one page: ``docs/kalman.md``.

Example (a linear inverse problem, data-misfit controlled steps, Nesterov momentum)::

    from l2ljax import kalman
    U = jax.random.normal(key, (100, 10)); prev, theta, t = U, jnp.ones(()), 0.0
    for n in range(1, 30):
        G = U @ A.T
        h, t, done = kalman.data_misfit_step(G, y, 0.01, elapsed=t)
        if done: break
        new = kalman.eki_update(jax.random.fold_in(key, n), U, G, y, 0.01, step_size=h)
        lam, theta = kalman.NesterovAccelerator().coefficient(n, theta)
        U, prev = kalman.accelerate(new, prev, lam), new
"""

from l2ljax.kalman.eki import (
    NoiseCovarianceError,
    StrategyError,
    additive_inflation,
    check_noise,
    eki_update,
    eki_update_sequential,
    ensemble_spread,
    etki_update,
    inflate,
    misfit,
    tikhonov_augment,
)
from l2ljax.kalman.localizers import SEC, BernoulliDropout, SECFisher, SECNice, sampling_std
from l2ljax.kalman.minibatch import FixedMinibatcher, MinibatchError, RandomMinibatcher
from l2ljax.kalman.strategies import (
    ConstantNesterovAccelerator,
    DataMisfitController,
    FirstOrderNesterovAccelerator,
    FixedStep,
    Inversion,
    NesterovAccelerator,
    NoAcceleration,
    TikhonovInversion,
    TransformInversion,
    accelerate,
    data_misfit_step,
    misfit_potential,
)

__all__ = [
    "SEC", "BernoulliDropout", "ConstantNesterovAccelerator", "DataMisfitController", "FirstOrderNesterovAccelerator",
    "FixedMinibatcher", "FixedStep", "Inversion", "MinibatchError", "NesterovAccelerator", "NoAcceleration",
    "NoiseCovarianceError", "RandomMinibatcher", "SECFisher", "SECNice", "StrategyError", "TikhonovInversion",
    "TransformInversion", "accelerate", "additive_inflation", "check_noise", "data_misfit_step", "eki_update",
    "eki_update_sequential", "ensemble_spread", "etki_update", "inflate", "misfit", "misfit_potential",
    "sampling_std", "tikhonov_augment",
]
