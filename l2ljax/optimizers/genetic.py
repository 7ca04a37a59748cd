"""Genetic algorithm: tournament selection, blend crossover, Gaussian mutation, hall of fame.

The generational scheme of DEAP's ``eaSimple``/``varAnd`` (Fortin et al., *DEAP: Evolutionary
Algorithms Made Easy*, JMLR 13:2171, 2012) as used by L2L's ``GeneticAlgorithmOptimizer``;
blend crossover BLX-α (Eshelman & Schaffer, *Real-coded genetic algorithms and
interval-schemata*, FOGA 1993). The told population P_t (J rows, weighted fitness w_i ∈ ℝ^m)
is the parent generation; ``tell`` breeds the ``pop_size`` offspring that the next ``ask``
returns:

1. selection: pop_size tournaments; each draws ``tourn_size`` contestants uniformly *with
   replacement* and keeps the best (the first drawn among equals);
2. crossover: offspring (0, 1), (2, 3), … are mated with probability ``cx_prob``; per gene
   γ = (1 + 2α)u − α, u ~ U[0, 1), α = ``mate_par``, and
   x₁' = (1 − γ)x₁ + γx₂,  x₂' = γx₁ + (1 − γ)x₂   (an odd last offspring is not mated);
3. mutation: each offspring with probability ``mut_prob``; each of its genes with probability
   ``ind_prob`` gets + N(0, ``mut_par``²);
4. duplicates: an offspring identical to an earlier one is mutated again, this time surely:
   each gene with probability ``ind_prob`` and, if none was picked, one gene chosen uniformly,
   by + δ, δ ~ N(0, ``mut_par``²); if the bounds clip it back onto its old value it moves by −δ
   instead. (L2L mutates a later duplicate with probability 0.8 by the ordinary mutation, which
   with a small ``ind_prob`` usually leaves it unchanged.) With ``mut_par = 0`` or a coordinate
   whose bounds coincide, duplicates cannot move and stay.

Offspring are clipped to the bounds after crossover, after mutation and after the duplicate
step (L2L's ``bounding_func`` around ``mate`` and ``mutate``).

Fitness comparison (selection and hall of fame) is DEAP's: the weighted fitness tuples
``evaluation.weighted`` (fitness · weights, one column per objective) are compared
lexicographically: first objective first, ties broken by the next. A row with a non-finite
entry (NaN fitness) ranks below every valid row, so it wins a tournament only when all
contestants are invalid, and never enters the hall of fame. With one objective this is the
comparison of ``evaluation.score``. The base class's ``state.best_x`` still tracks the best
*scalar* score (the sum of the weighted objectives); with several objectives the lexicographic
best is ``hall_of_fame(state)[0][0]``.

Hall of fame: the ``hall_of_fame_size`` best distinct individuals ever evaluated, sorted
best first, with their weighted fitness (DEAP ``HallOfFame``: an individual already in it is
not entered again, and among equals the older entry stays ahead, so a full hall admits only
strictly better individuals). Empty slots hold weighted fitness −inf.

L2L parameter names: ``pop_size, cx_prob, mut_prob, ind_prob, tourn_size, mate_par, mut_par``
(``n_iteration`` and ``seed`` are :func:`l2ljax.run`'s ``n_generations`` and key); L2L's hall
of fame holds 20 (``hall_of_fame_size``). ``cx_prob, mut_prob, ind_prob, mate_par, mut_par``
are :class:`GeneticAlgorithmParams` (vmappable); ``tourn_size`` and the sizes fix array shapes
and are constructor arguments. The initial population is ``pop_size`` draws of the space's
sampler, with ``x0`` as its first row. Differences from L2L: the whole population is evaluated
every generation (L2L re-evaluates only changed individuals; vmapped evaluation makes that
moot, and a noisy fitness is re-drawn instead of kept); the random streams are JAX's, so runs
match DEAP's in distribution, not number for number.

Split over shards (``parallel.MPI()``, or ``Devices``/``Distributed`` when the device count
divides ``pop_size``) each shard breeds and keeps its own offspring rows: selection runs on every
shard alike from the gathered (J, n_obj) fitness; each row's crossover, mutation and duplicate
draws come from its own row (or pair) key, so the numbers are those of one process; parents and
mates are fetched across shards by :meth:`l2ljax.rows.Rows.take`, duplicates are found from
gathered row hashes and an exact comparison with the row that sorts before, and the hall of fame
is merged from each shard's k best. Per generation a shard receives three ring passes of the
population (parents and mates; the offspring's predecessors; the told rows' predecessors), each
the J × dim values of one all-gather, with only one travelling block of J / n rows held beside
the shard's own rows.

Several parameter sets per individual (L2L ``MultiGeneticAlgorithmOptimizer``,
``n_inner_params``): give the optimizee a template whose leaves have a leading axis
``n_inner`` (e.g. ``{"w": zeros((n_inner, d))}``) and let its function vmap the inner model
over that axis and reduce (mean fitness, or one objective per statistic). The GA needs nothing
special: the stack is one genome, selected, crossed and mutated as a whole, and one vmapped
call evaluates pop_size × n_inner parameter sets.

Example::

    problem = l2ljax.function_optimizee("rastrigin", dim=2)
    opt = GeneticAlgorithm(problem, pop_size=50, tourn_size=3)
    params = opt.default_params.replace(cx_prob=0.7)       # L2L's example values otherwise
    result = l2ljax.run(opt, problem, jax.random.key(0), n_generations=40, params=params)
    individuals, weighted = opt.hall_of_fame(result.state)  # best 20 distinct, best first
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from l2ljax.core import Evaluation, Optimizee, Optimizer, OptState, PyTree, Space, check_positive_int, check_range
from l2ljax.rows import Rows, everything

__all__ = [
    "GeneticAlgorithm", "GeneticAlgorithmParams", "GeneticAlgorithmState", "blend_crossover",
    "duplicate_rows", "fitness_levels", "gaussian_mutation", "lexicographic_order",
    "tournament_selection",
]


# --------------------------------------------------------------------------- fitness comparison


def _comparable(weighted: jax.Array) -> jax.Array:
    """Rows with a non-finite entry become all -inf (the worst, equal among themselves)."""
    valid = jnp.all(jnp.isfinite(weighted), axis=1, keepdims=True)
    return jnp.where(valid, weighted, -jnp.inf)


def lexicographic_order(weighted: jax.Array) -> jax.Array:
    """Indices of the rows of ``weighted`` (J, n_obj), best first, by lexicographic comparison.

    Larger is better in every column; column 0 decides, later columns break ties, remaining
    ties keep index order (stable). Rows with a non-finite entry come last.
    """
    keys = -_comparable(weighted)
    keys = jnp.where(keys == 0, jnp.zeros_like(keys), keys)  # -0.0 == 0.0, also for the sort
    index = jnp.arange(keys.shape[0], dtype=jnp.int32)
    return jax.lax.sort((*keys.T, index), num_keys=keys.shape[1] + 1)[-1]


def fitness_levels(weighted: jax.Array) -> jax.Array:
    """(J,) int32 level of each row: 0 for the best, equal rows share a level, invalid rows last."""
    order = lexicographic_order(weighted)
    ranked = _comparable(weighted)[order]
    new_level = jnp.concatenate([jnp.zeros(1, bool), jnp.any(ranked[1:] != ranked[:-1], axis=1)])
    return jnp.zeros(order.shape, jnp.int32).at[order].set(jnp.cumsum(new_level, dtype=jnp.int32))


# --------------------------------------------------------------------------- operators


def _merit(weighted: jax.Array) -> jax.Array:
    """(J,) larger-is-better key equivalent to the lexicographic comparison of the rows."""
    if weighted.shape[1] == 1:
        return _comparable(weighted)[:, 0]
    return -fitness_levels(weighted)


def _standard_normal(u: jax.Array) -> jax.Array:
    """N(0, 1) from U[0, 1) by the inverse CDF (as ``jax.random.normal``), finite at u = 0."""
    v = jnp.maximum(2.0 * u - 1.0, jnp.nextafter(jnp.asarray(-1.0, u.dtype), jnp.asarray(0.0, u.dtype)))
    return jnp.sqrt(jnp.asarray(2.0, u.dtype)) * jax.lax.erf_inv(v)


def tournament_selection(key: jax.Array, weighted: jax.Array, n: int, tourn_size: int) -> jax.Array:
    """Indices of ``n`` tournament winners among the rows of ``weighted`` (DEAP ``selTournament``).

    Each tournament draws ``tourn_size`` contestants uniformly with replacement; the
    lexicographically best wins, the first drawn among equals. Invalid rows lose to valid ones.
    """
    size = weighted.shape[0]
    u = jax.random.uniform(key, (n, tourn_size))
    contestants = jnp.minimum(jnp.floor(u * size).astype(jnp.int32), size - 1)
    winner = jnp.argmax(_merit(weighted)[contestants], axis=1)
    return jnp.take_along_axis(contestants, winner[:, None], axis=1)[:, 0]


def _row_uniforms(key: jax.Array, index: jax.Array, width: int, dtype: Any) -> jax.Array:
    """(len(index), width) U[0, 1): row i's from ``fold_in(key, index[i])``, so a row (a global
    index) draws the same numbers however the population is split over shards."""
    return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (width,), dtype))(index)


def _pair_partner(index: jax.Array, n: int) -> jax.Array:
    """The row each row is mated with: 2k ↔ 2k + 1; an odd last row is its own partner."""
    partner = index ^ 1
    return jnp.where(partner < n, partner, index)


def _blend(key: jax.Array, x: jax.Array, mate_x: jax.Array, index: jax.Array, partner: jax.Array,
           alpha: jax.Array | float, cx_prob: jax.Array | float) -> jax.Array:
    """Rows ``index`` (global) of the blend crossover: ``x`` their parents, ``mate_x`` their mates'."""
    u = _row_uniforms(key, index // 2, x.shape[1] + 1, x.dtype)  # one draw per pair: both children share γ
    mate = (u[:, :1] < cx_prob) & (partner != index)[:, None]
    gamma = (1.0 + 2.0 * alpha) * u[:, 1:] - alpha
    return jnp.where(mate, x + gamma * (mate_x - x), x).astype(x.dtype)


def blend_crossover(key: jax.Array, x: jax.Array, alpha: jax.Array | float, cx_prob: jax.Array | float
                    ) -> jax.Array:
    """Mate rows (0, 1), (2, 3), … with probability ``cx_prob`` by BLX-α (DEAP ``cxBlend``).

    Per gene γ = (1 + 2α)u − α, u ~ U[0, 1) (one draw per pair, from ``fold_in(key, pair)``);
    children x₁ + γ(x₂ − x₁) and x₂ + γ(x₁ − x₂) (algebraically DEAP's (1−γ)x₁ + γx₂ and
    γx₁ + (1−γ)x₂; this form keeps equal genes exact). An odd last row is not mated.
    """
    index = jnp.arange(x.shape[0])
    partner = _pair_partner(index, x.shape[0])
    return _blend(key, x, x[partner], index, partner, alpha, cx_prob)


def gaussian_mutation(key: jax.Array, x: jax.Array, sigma: jax.Array | float, mut_prob: jax.Array | float,
                      ind_prob: jax.Array | float, index: jax.Array | None = None) -> jax.Array:
    """Each row with probability ``mut_prob``, each of its genes with probability ``ind_prob``:
    + N(0, sigma²) (DEAP ``mutGaussian`` with mu = 0, applied as in ``varAnd``). Row i draws from
    ``fold_in(key, index[i])`` (default: its position)."""
    dim = x.shape[1]
    index = jnp.arange(x.shape[0]) if index is None else index
    u = _row_uniforms(key, index, 2 * dim + 1, x.dtype)
    genes = (u[:, :1] < mut_prob) & (u[:, 1:dim + 1] < ind_prob)
    return x + jnp.where(genes, sigma * _standard_normal(u[:, dim + 1:]), 0).astype(x.dtype)


def _row_hashes(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two 32-bit hashes of each row's bits; equal rows (``==``, so ±0 alike) hash alike, exactly."""
    x = jnp.where(x == 0, jnp.zeros_like(x), x)
    if x.dtype.itemsize == 8:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint64)
        bits = (bits ^ (bits >> 32)).astype(jnp.uint32)
    elif x.dtype.itemsize == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    else:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    column = jnp.arange(x.shape[1], dtype=jnp.uint32)
    salt = jnp.asarray([0x1B873593, 0x2545F491], jnp.uint32)[:, None]

    def mix(h: jax.Array) -> jax.Array:  # murmur3's 32-bit finaliser
        h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
        h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
        return h ^ (h >> 16)

    position = mix(column * jnp.uint32(0x9E3779B9) + salt)  # (2, dim)
    hashes = jnp.sum(mix(bits[None] ^ position[:, None]), axis=2, dtype=jnp.uint32)  # wraps mod 2³²
    return hashes[0], hashes[1]


def duplicate_rows(x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """(J,) bool: row i equals (``==`` on every gene) an earlier row; only ``valid`` rows count.

    Fixed shapes and O(J·dim + J log J): rows are sorted by a 64-bit hash of their bits and each
    is compared exactly with its neighbour, so a hit is always a true duplicate (a duplicate is
    missed only if a distinct row with the same 64-bit hash sorts between two copies).
    """
    n = x.shape[0]
    valid = jnp.ones(n, bool) if valid is None else valid
    h1, h2 = _row_hashes(x)
    index = jnp.arange(n, dtype=jnp.int32)
    order = jax.lax.sort((h1, h2, (~valid).astype(jnp.int32), index), num_keys=4)[-1]
    xs, vs = x[order], valid[order]
    same = jnp.all(xs[1:] == xs[:-1], axis=1) & vs[1:] & vs[:-1]
    return jnp.zeros(n, bool).at[order].set(jnp.concatenate([jnp.zeros(1, bool), same]))


def _mutate_duplicates(key: jax.Array, x: jax.Array, duplicate: jax.Array, sigma: jax.Array | float,
                       ind_prob: jax.Array | float, clip: Callable[[jax.Array], jax.Array],
                       index: jax.Array | None = None) -> jax.Array:
    """Move every duplicate row by a mutation that touches at least one gene (see module doc)."""
    dim = x.shape[1]
    index = jnp.arange(x.shape[0]) if index is None else index
    u = _row_uniforms(key, index, 2 * dim + 1, x.dtype)
    genes = u[:, :dim] < ind_prob
    forced = jnp.arange(dim) == jnp.minimum(jnp.floor(u[:, dim:dim + 1] * dim).astype(jnp.int32), dim - 1)
    genes = genes | (forced & ~jnp.any(genes, axis=1, keepdims=True))
    step = jnp.where(genes, sigma * _standard_normal(u[:, dim + 1:]), 0).astype(x.dtype)
    forward = clip(x + step)
    moved = jnp.any(forward != x, axis=1, keepdims=True)
    return jnp.where(duplicate[:, None], jnp.where(moved, forward, clip(x - step)), x)


def _duplicates_over_shards(x: jax.Array, valid: jax.Array, rows: Rows) -> jax.Array:
    """:func:`duplicate_rows` of a sharded population, for this shard's rows: the (J, 2) hashes
    are gathered and sorted on every shard, and each row is compared exactly with the row that
    sorts before it, fetched by :meth:`Rows.take` (a ring, not a gather of the population)."""
    h1, h2 = _row_hashes(x)
    h1, h2, valid_all = rows.gather(h1), rows.gather(h2), rows.gather(valid.astype(jnp.int32)) > 0
    n = rows.total_rows
    index = jnp.arange(n, dtype=jnp.int32)
    order = jax.lax.sort((h1, h2, (~valid_all).astype(jnp.int32), index), num_keys=4)[-1]
    position = jnp.zeros(n, jnp.int32).at[order].set(index)
    mine = rows.indices()
    before = order[jnp.maximum(position[mine] - 1, 0)]
    previous = rows.take(x, before)
    return ((position[mine] > 0) & jnp.all(previous == x, axis=1) & valid & valid_all[before])


# --------------------------------------------------------------------------- the optimizer


@struct.dataclass
class GeneticAlgorithmParams:
    """Vmappable hyperparameters (L2L names; defaults: L2L's function-optimization example)."""

    cx_prob: float = 0.5  # probability that a pair of offspring is mated
    mut_prob: float = 0.3  # probability that an offspring is mutated
    ind_prob: float = 0.02  # probability that a gene of a mutated offspring changes
    mate_par: float = 0.5  # α of the blend crossover
    mut_par: float = 1.0  # σ of the Gaussian mutation


class GeneticAlgorithmState(NamedTuple):
    offspring: jax.Array  # (pop_size, dim) what the next ask returns
    hof_x: jax.Array  # (hall_of_fame_size, dim) best distinct individuals ever, best first
    hof_weighted: jax.Array  # (hall_of_fame_size, n_objectives) their weighted fitness; -inf: empty slot
    n_duplicates: jax.Array  # () offspring re-mutated as duplicates by the last tell
    key: jax.Array  # for the variation in tell


class GeneticAlgorithm(Optimizer):
    """L2L's GeneticAlgorithmOptimizer (DEAP ``eaSimple``) on fixed-shape arrays; see the module doc.

    n_objectives: number of fitness columns (default: the optimizee's, or 1 given a Space);
                  the hall of fame stores that many weighted values per individual.
    """

    name = "GeneticAlgorithm"
    Params = GeneticAlgorithmParams
    sharded_fields = ("offspring",)  # a shard breeds and keeps its own rows (parallel.MPI())

    def __init__(self, space: Space | Optimizee, pop_size: int = 50, *, tourn_size: int = 3,
                 hall_of_fame_size: int = 20, n_objectives: int | None = None, rows: Rows | None = None):
        super().__init__(space, pop_size)
        if self.pop_size < 2:
            raise ValueError(f"{self.name}: pop_size must be at least 2 (offspring are mated in pairs), "
                             f"got {pop_size}")
        if rows is not None and (rows.total_rows != self.pop_size or rows.count < 1):
            raise ValueError(f"rows {rows.start}..{rows.start + rows.count} of {rows.total_rows} do not shard a "
                             f"population of {self.pop_size} (every shard needs at least one row)")
        self.rows = None if rows is None or rows.whole else rows
        self.tourn_size = check_positive_int(tourn_size, "tourn_size")
        self.hall_of_fame_size = check_positive_int(hall_of_fame_size, "hall_of_fame_size")
        if n_objectives is None:
            n_objectives = space.n_objectives if isinstance(space, Optimizee) else 1
        self.n_objectives = check_positive_int(n_objectives, "n_objectives")

    def _check_params(self, params: GeneticAlgorithmParams) -> None:
        for name in ("cx_prob", "mut_prob", "ind_prob"):
            check_range(params, name, 0.0, 1.0, owner=self.name)
        check_range(params, "mate_par", 0.0, float("inf"), owner=self.name)
        check_range(params, "mut_par", 0.0, float("inf"), owner=self.name)

    @property
    def _rows(self) -> Rows:
        return everything(self.pop_size) if self.rows is None else self.rows

    def _init(self, key: jax.Array, x0: jax.Array, params: GeneticAlgorithmParams) -> GeneticAlgorithmState:
        k_pop, k_state = jax.random.split(key)
        rows = self._rows  # a shard draws only its own rows, each from its global index
        population = self.space.clip(jax.vmap(self.space.sample)(rows.keys(k_pop)).astype(x0.dtype))
        population = jnp.where((rows.indices() == 0)[:, None], x0[None], population)
        return GeneticAlgorithmState(
            offspring=population,
            hof_x=jnp.zeros((self.hall_of_fame_size, x0.shape[0]), x0.dtype),
            hof_weighted=jnp.full((self.hall_of_fame_size, self.n_objectives), -jnp.inf, x0.dtype),
            n_duplicates=jnp.array(0, jnp.int32),
            key=k_state,
        )

    def _ask(self, key: jax.Array, inner: GeneticAlgorithmState, params: GeneticAlgorithmParams) -> jax.Array:
        return inner.offspring  # bred in tell; the ask key is not needed

    def _tell(self, inner: GeneticAlgorithmState, population: jax.Array, evaluation: Evaluation,
              params: GeneticAlgorithmParams) -> GeneticAlgorithmState:
        if evaluation.weighted.shape[1] != self.n_objectives:
            raise ValueError(f"{self.name}: the evaluation has {evaluation.weighted.shape[1]} objectives, the "
                             f"optimizer was built for n_objectives={self.n_objectives}")
        population = population.astype(inner.offspring.dtype)
        valid = (jnp.all(jnp.isfinite(evaluation.weighted), axis=1) & jnp.isfinite(evaluation.score)
                 & jnp.all(jnp.isfinite(population), axis=1))
        weighted = jnp.where(valid[:, None], evaluation.weighted.astype(inner.hof_weighted.dtype), -jnp.inf)

        key, k_select, k_mate, k_mutate, k_duplicate = jax.random.split(inner.key, 5)
        rows, n = self._rows, self.pop_size
        index = rows.indices()
        # selection on every shard alike, from the (J, n_obj) weighted fitness of all rows
        parent = tournament_selection(k_select, rows.gather(weighted), n, self.tourn_size)
        partner = _pair_partner(index, n)
        if rows.whole:
            parents, mates = population[parent], population[parent[partner]]
        else:  # this shard's parents and their mates' parents, wherever they live
            both = rows.take(population, jnp.concatenate([parent[index], parent[partner]]))
            parents, mates = both[:rows.count], both[rows.count:]
        clip = self.space.clip
        offspring = clip(_blend(k_mate, parents, mates, index, partner, params.mate_par, params.cx_prob))
        offspring = clip(gaussian_mutation(k_mutate, offspring, params.mut_par, params.mut_prob, params.ind_prob,
                                           index))
        duplicate = (duplicate_rows(offspring) if rows.whole else
                     _duplicates_over_shards(offspring, jnp.ones(rows.count, bool), rows))
        offspring = _mutate_duplicates(k_duplicate, offspring, duplicate, params.mut_par, params.ind_prob, clip,
                                       index)

        if rows.whole:
            hof_x, hof_weighted = _update_hall_of_fame(inner.hof_x, inner.hof_weighted, population, weighted)
        else:
            hof_x, hof_weighted = _merge_hall_of_fame(inner.hof_x, inner.hof_weighted, population, weighted, rows)
        n_duplicates = rows.total(jnp.sum(duplicate, dtype=jnp.int32))
        return GeneticAlgorithmState(offspring, hof_x, hof_weighted, n_duplicates, key)

    def hall_of_fame(self, state: OptState) -> tuple[PyTree, jax.Array]:
        """(individuals, weighted fitness): the best distinct individuals ever seen, best first.

        individuals: pytree with leading axis ``hall_of_fame_size``; weighted:
        ``(hall_of_fame_size, n_objectives)``, ``-inf`` rows are empty slots.
        """
        return self.space.to_pytree(state.inner.hof_x), state.inner.hof_weighted

    def diagnostics(self, state: OptState) -> dict[str, jax.Array]:
        return {"n_duplicates": state.inner.n_duplicates, "hall_of_fame_weighted": state.inner.hof_weighted}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "tourn_size": self.tourn_size, "hall_of_fame_size": self.hall_of_fame_size,
                "n_objectives": self.n_objectives}


def _update_hall_of_fame(hof_x: jax.Array, hof_weighted: jax.Array, population: jax.Array,
                         weighted: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Merge the evaluated population into the hall of fame (DEAP ``HallOfFame.update``).

    The current members come first, so they win ties and keep their place against copies of
    themselves; a copy of a member is not entered again, nor is any invalid row.
    """
    x = jnp.concatenate([hof_x, population])
    w = jnp.concatenate([hof_weighted, weighted])
    valid = jnp.all(jnp.isfinite(w), axis=1)
    eligible = valid & ~duplicate_rows(x, valid)
    w = jnp.where(eligible[:, None], w, -jnp.inf)
    top = lexicographic_order(w)[:hof_x.shape[0]]
    top_w = w[top]
    filled = jnp.all(jnp.isfinite(top_w), axis=1, keepdims=True)
    return jnp.where(filled, x[top], 0).astype(hof_x.dtype), top_w


def _merge_hall_of_fame(hof_x: jax.Array, hof_weighted: jax.Array, population: jax.Array, weighted: jax.Array,
                        rows: Rows) -> tuple[jax.Array, jax.Array]:
    """:func:`_update_hall_of_fame` of a sharded population, the same on every shard.

    Each shard proposes its k best eligible rows (valid, not a copy of a hall-of-fame member nor
    of an earlier row of any shard); only these k·n_shards rows are gathered. Every row of the
    whole update's hall of fame is among its shard's k best. The proposals come shard by shard,
    each shard's by fitness (a stable sort), so the merge's stable sort breaks ties by row index,
    as in the whole population.
    """
    k = hof_x.shape[0]
    valid = jnp.all(jnp.isfinite(weighted), axis=1)
    copy_of_earlier = _duplicates_over_shards(population, valid, rows)
    known = duplicate_rows(jnp.concatenate([hof_x, population]),
                           jnp.concatenate([jnp.all(jnp.isfinite(hof_weighted), axis=1), valid]))[k:]
    eligible = valid & ~copy_of_earlier & ~known
    pad = max(k - rows.count, 0)
    x = jnp.concatenate([population, jnp.zeros((pad, population.shape[1]), population.dtype)])
    w = jnp.concatenate([jnp.where(eligible[:, None], weighted, -jnp.inf),
                         jnp.full((pad, weighted.shape[1]), -jnp.inf, weighted.dtype)])
    top = lexicographic_order(w)[:k]
    proposals_x = rows.gather_blocks(x[top]).reshape(-1, x.shape[1])
    proposals_w = rows.gather_blocks(w[top]).reshape(-1, w.shape[1])
    return _update_hall_of_fame(hof_x, hof_weighted, proposals_x, proposals_w)
