"""FACE: cross-entropy with a population that grows while the search stagnates.

The fully adaptive cross-entropy method (FACE) of Rubinstein & Kroese, *The Cross-Entropy
Method* (Springer 2004), in the form of L2L's ``FACEOptimizer``. With N live samples in
generation t (N_0 = min_pop_size):

1. sample x_1..x_N ~ p_θ and score them; b_t = best score, γ_t = the ``n_elite``-th best;
2. if b_t > b_{t−1} or γ_t > γ_{t−1} (an improvement; b_{−1} = γ_{−1} = −inf):
   refit θ as :class:`~l2ljax.optimizers.cross_entropy.CrossEntropy` does, to the ``n_elite``
   best plus, when ``temp_decay > 0``, each other sample with probability min(1, e^{(f−γ_t)/T}),
   θ ← smoothing·θ + (1 − smoothing)·θ_fit; and shrink N ← ⌊(N + min_pop_size)/2⌋;
3. otherwise keep θ and grow N ← min(N + n_expand, max_pop_size): the next generation is a
   fresh, larger sample of the same distribution;
4. T ← T·temp_decay (when ``temp_decay > 0``).

b and γ are those of the last generation, not of the whole run (as in L2L). Where L2L stops
the run once N + n_expand would exceed max_pop_size ("possibly diverged"), FACE here keeps
sampling max_pop_size individuals (use ``stop_criterion`` or ``n_generations`` to stop).

Fixed shapes: ``ask`` always returns ``max_pop_size`` rows (``self.pop_size``); the first
N (``state.inner.pop_size``, a traced integer) are live, every later row i is a copy of live
row i mod N. ``tell`` gives the copies a score of −inf before anything else sees them, so they
are never elite, never accepted and never the best-so-far, even for a noisy optimizee whose
copy scores differently from the original (and for a deterministic one a copy scores exactly
as its original, so the recorded trajectory stays truthful). The cost: the jitted
:func:`l2ljax.run` evaluates all ``max_pop_size`` rows every generation, which is free padding
for a cheap vmapped optimizee but wasted work for an expensive one; the host path and custom
loops can evaluate only the rows of :meth:`FACE.live_mask`. The diagnostics ``live_pop_size``
(N of the generation) and ``evaluations`` (live evaluations so far) count the evaluations the
algorithm needed; compare budgets with those.

L2L parameter names: ``min_pop_size, max_pop_size, n_elite, smoothing, temp_decay,
distribution, n_expand`` (``n_iteration``, ``stop_criterion`` and ``seed`` are arguments of
:func:`l2ljax.run` and its key). L2L has no defaults; ours are those of its predecessor LTL
(``min_pop_size=30, max_pop_size=50, n_elite=10, smoothing=0.2, temp_decay=0, n_expand=5``).
As in L2L, θ is first fitted to ``min_pop_size`` draws of the space's sampler, or is
N(x0, init_std²·I) when ``init_std`` is given. Non-finite fitness scores −inf: never elite,
never kept, never best. L2L's annealed acceptance pairs sorted samples with unsorted
fitness values and uses the 0/1 draws as row indices; here each non-elite sample is kept
with its own probability.

Example::

    opt = FACE(problem, min_pop_size=30, max_pop_size=50, n_elite=10, n_expand=5)
    result = l2ljax.run(opt, problem, jax.random.key(0), n_generations=50)
    result.trajectory["diag/evaluations"][-1]   # live evaluations used
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from l2ljax.core import Evaluation, Optimizee, Optimizer, OptState, Space, check_positive_int
from l2ljax.optimizers._common import check_annealing_params, cool, initial_distribution, refit, select_samples
from l2ljax.optimizers.cross_entropy import Gaussian


@struct.dataclass
class FACEParams:
    smoothing: float = 0.2
    temp_decay: float = 0.0
    temperature: float = 1.0


class FACEState(NamedTuple):
    dist: Any
    gamma: jax.Array  # γ of the last generation (−inf before the first)
    gen_best: jax.Array  # best live score of the last generation (−inf before the first)
    temperature: jax.Array
    pop_size: jax.Array  # live rows of the next population, in [min_pop_size, max_pop_size]
    live_pop_size: jax.Array  # live rows of the last evaluated population (0 before the first)
    evaluations: jax.Array  # live evaluations so far
    key: jax.Array  # for the acceptance draws and noisy refits in tell


class FACE(Optimizer):
    """Fully adaptive cross-entropy: see the module docstring. ``self.pop_size == max_pop_size``."""

    name = "FACE"
    Params = FACEParams

    def __init__(self, space: Space | Optimizee, min_pop_size: int = 30, max_pop_size: int = 50, n_elite: int = 10,
                 n_expand: int = 5, distribution: Any = None, init_std: float | None = None):
        self.min_pop_size = check_positive_int(min_pop_size, "min_pop_size")
        max_pop_size = check_positive_int(max_pop_size, "max_pop_size")
        self.n_elite = check_positive_int(n_elite, "n_elite")
        self.n_expand = check_positive_int(n_expand, "n_expand")
        if self.min_pop_size > max_pop_size:
            raise ValueError(f"FACE: min_pop_size ({self.min_pop_size}) exceeds max_pop_size ({max_pop_size})")
        if self.n_elite > self.min_pop_size:
            raise ValueError(f"FACE: n_elite ({self.n_elite}) exceeds min_pop_size ({self.min_pop_size})")
        if self.n_elite < 2:
            raise ValueError("FACE: n_elite must be at least 2, a distribution refit needs two samples")
        if init_std is not None and not init_std > 0:
            raise ValueError(f"init_std must be positive, got {init_std}")
        super().__init__(space, max_pop_size)
        self.max_pop_size = max_pop_size
        self.distribution = Gaussian() if distribution is None else distribution
        self.init_std = init_std

    def _check_params(self, params: FACEParams) -> None:
        check_annealing_params(params, self.name)

    def live_mask(self, state: OptState) -> jax.Array:
        """(max_pop_size,) True for the rows of ``ask(key, state)`` that count; the rest are copies."""
        return jnp.arange(self.max_pop_size) < state.inner.pop_size

    def _init(self, key: jax.Array, x0: jax.Array, params: FACEParams) -> FACEState:
        k_dist, k_state = jax.random.split(key)
        dist = initial_distribution(self.distribution, self.space, k_dist, k_state, x0, self.min_pop_size,
                                    self.init_std)
        minus_inf = jnp.array(-jnp.inf, x0.dtype)
        return FACEState(dist, minus_inf, minus_inf, jnp.asarray(params.temperature, x0.dtype),
                         jnp.array(self.min_pop_size, jnp.int32), jnp.array(0, jnp.int32), jnp.array(0, jnp.int32),
                         k_state)

    def _ask(self, key: jax.Array, inner: FACEState, params: FACEParams) -> jax.Array:
        samples = self.distribution.sample(key, inner.dist, self.max_pop_size)
        return samples[jnp.arange(self.max_pop_size) % inner.pop_size]

    def tell_flat(self, state: OptState, population: jax.Array, evaluation: Evaluation) -> OptState:
        """As :meth:`Optimizer.tell_flat`, after scoring the dead rows −inf (see the module docstring)."""
        if population.ndim != 2 or population.shape[0] != self.max_pop_size:
            raise ValueError(f"FACE.tell expects the {self.max_pop_size} rows ask returned (max_pop_size), "
                             f"got a population of shape {population.shape}")
        if evaluation.score.shape != (self.max_pop_size,):
            raise ValueError(f"evaluation scores of shape {evaluation.score.shape} do not match "
                             f"the population of {self.max_pop_size} individuals")
        live = self.live_mask(state)
        evaluation = evaluation._replace(score=jnp.where(live, evaluation.score, -jnp.inf),
                                         weighted=jnp.where(live[:, None], evaluation.weighted, -jnp.inf))
        return super().tell_flat(state, population, evaluation)

    def _tell(self, inner: FACEState, population: jax.Array, evaluation: Evaluation,
              params: FACEParams) -> FACEState:
        score = evaluation.score  # dead rows are -inf already
        key, k_accept, k_fit = jax.random.split(inner.key, 3)
        kept, gamma = select_samples(k_accept, score, self.n_elite, inner.temperature, params.temp_decay)
        gen_best = jnp.max(score)
        improved = (gen_best > inner.gen_best) | (gamma > inner.gamma)
        fitted, _ = refit(self.distribution, k_fit, inner.dist, population, kept, params.smoothing)
        dist = jax.tree_util.tree_map(lambda new, old: jnp.where(improved, new, old), fitted, inner.dist)
        n = inner.pop_size
        next_n = jnp.where(improved, (n + self.min_pop_size) // 2, jnp.minimum(n + self.n_expand, self.max_pop_size))
        return FACEState(dist, gamma.astype(population.dtype), gen_best.astype(population.dtype),
                         cool(inner.temperature, params.temp_decay), next_n.astype(jnp.int32), n,
                         inner.evaluations + n, key)

    def diagnostics(self, state: OptState) -> dict[str, jax.Array]:
        inner = state.inner
        return {"gamma": inner.gamma, "temperature": inner.temperature,
                "mean_spread": jnp.mean(self.distribution.spread(inner.dist)),
                "live_pop_size": inner.live_pop_size, "evaluations": inner.evaluations}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "min_pop_size": self.min_pop_size, "max_pop_size": self.max_pop_size,
                "n_elite": self.n_elite, "n_expand": self.n_expand,
                "distribution": self.distribution.config(), "init_std": self.init_std}
