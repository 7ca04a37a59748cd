"""Homeostatic structural plasticity in NEST as an inner loop: tune growth curves to reach a target state.

The network (NEST's example ``structural_plasticity.py``; Butz & van Ooyen, *PLoS Comput. Biol.*
9:e1003259, 2013) starts with no recurrent synapses: ``n_excitatory`` E and ``n_inhibitory`` I
``iaf_psc_alpha`` neurons, each driven by Poisson input. Every neuron carries a calcium trace

    dCa/dt = −Ca / τ_Ca + β_Ca Σ_spikes δ(t − t_s)            (mean Ca → β_Ca τ_Ca · rate)

and grows synaptic elements (axonal boutons ``Axon_ex``/``Axon_in``, dendritic spines
``Den_ex``/``Den_in``) by a Gaussian growth curve

    dz/dt = ν (2 exp(−((Ca − ξ)/ζ)²) − 1),   ξ = (η + ε)/2,   ζ = (ε − η) / (2 √ln 2),

positive while 0 = η < Ca < ε and negative above the set point ε. Every ``update_interval_ms``
NEST pairs free boutons with free spines into synapses and deletes synapses whose elements
shrank. Here β_Ca = 0.01 s / τ_Ca, so the calcium set point ε corresponds to a firing rate of
100 ε Hz; the set points are given in Hz.

An individual holds named, bounded parameters (:data:`PARAMETERS`; by default the growth rates ν
and set points of E and I neurons, as L2L's ``SPNoVizOptimizee`` on L2L's branches tuned the
growth rates ``egr``/``igr``). Its fitness after ``t_sim_ms`` of simulated time has three
objectives, all minimised (L2L fitness weights ``(-1, -1, -0.5)``): the relative errors of the
E and I firing rates (spikes in the last ``measure_ms``) and of the number of recurrent
synapses per neuron against ``target_rate_e_hz``, ``target_rate_i_hz``, ``target_synapses``.
L2L's SP optimizee scored the E rate twice (its I term reads the E rate); both are scored here.

Every call resets the NEST kernel and seeds it from the individual's row seed, so a result does
not depend on which worker or MPI rank ran it. NEST's own parallelism cannot help here: NEST 3.10
refuses structural plasticity with more than one thread (``KernelException``) and the PyPI wheel
is built without MPI (``nest.build_info``: ``have_threads=True``, ``threads_model='openmp'``,
``have_mpi=False``); the parallelism is the outer loop's (worker pool, MPI ranks).

This module needs only numpy at import (``nest`` is imported in the workers, l2ljax in
:func:`structural_plasticity_optimizee`), so the original L2L can load the same network
(``benchmarks/peer_l2l_nest.py``).

Example::

    problem = structural_plasticity_optimizee(n_workers=2)          # CI size; paper_scale=True: 800+200, 200 s
    opt = l2ljax.CrossEntropy(problem, pop_size=8)
    result = l2ljax.run(opt, problem, jax.random.key(0), 10, directory="runs/sp")
    print(result.best)                                               # {'growth_rate_e': ..., ...}
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

INSTALL_HINT = "pip install 'l2ljax[nest]' (or: pip install nest-simulator)"
OBJECTIVES = ("rate_error_e", "rate_error_i", "synapse_error")
WEIGHTS = (-1.0, -1.0, -0.5)


class Parameter(NamedTuple):
    default: float  # NEST's example values (growth rate 1e-4 elements/ms, set points 0.05 and 0.2 Ca)
    lower: float
    upper: float
    doc: str


PARAMETERS: dict[str, Parameter] = {
    "growth_rate_e": Parameter(0.1, 0.0, 10.0, "ν of the E neurons' elements (elements/s)"),
    "growth_rate_i": Parameter(0.1, 0.0, 10.0, "ν of the I neurons' elements (elements/s)"),
    "set_point_e": Parameter(5.0, 1.0, 40.0, "ε of the E neurons' elements, as a firing rate (Hz)"),
    "set_point_i": Parameter(20.0, 1.0, 40.0, "ε of the I neurons' elements, as a firing rate (Hz)"),
    "tau_ca_ms": Parameter(500.0, 100.0, 5000.0, "τ_Ca, the calcium trace's time constant (ms)"),
}
TUNED = ("growth_rate_e", "growth_rate_i", "set_point_e", "set_point_i")


@dataclasses.dataclass(frozen=True)
class Network:
    """The network, its simulation and its target state (defaults: CI size, ≈ 0.5 s per simulation)."""

    n_excitatory: int = 40
    n_inhibitory: int = 10
    t_sim_ms: float = 5000.0
    record_ms: float = 500.0  # sampling of rates and synapse counts (also the Simulate chunk)
    measure_ms: float = 1000.0  # the final window whose rates are scored
    update_interval_ms: float = 100.0  # structural plasticity's rewiring interval
    resolution_ms: float = 0.1
    background_rate_hz: float = 10000.0
    psc_e: float = 585.0  # pA: PSP amplitudes of +1 mV, −1 mV and 0.11 mV (NEST's example)
    psc_i: float = -585.0
    psc_ext: float = 6.2
    delay_ms: float = 1.0
    target_rate_e_hz: float = 8.0
    target_rate_i_hz: float = 15.0
    target_synapses: float = 4.0  # recurrent synapses per neuron
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("n_excitatory", "n_inhibitory", "threads"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Network.{name} must be a positive int, got {value!r}")
        if self.threads != 1:
            raise ValueError("NEST 3.10 refuses structural plasticity with more than one thread "
                             "(KernelException): use threads=1 and parallelise over workers and ranks")
        for name in ("t_sim_ms", "record_ms", "measure_ms", "update_interval_ms", "resolution_ms",
                     "target_rate_e_hz", "target_rate_i_hz", "target_synapses"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"Network.{name} must be positive, got {getattr(self, name)!r}")
        if self.measure_ms > self.t_sim_ms or self.t_sim_ms % self.record_ms or self.measure_ms % self.record_ms:
            raise ValueError(f"Network: t_sim_ms ({self.t_sim_ms}) and measure_ms ({self.measure_ms}) must be "
                             f"multiples of record_ms ({self.record_ms}), measure_ms <= t_sim_ms")

    @classmethod
    def paper_scale(cls, **changes: Any) -> Network:
        """NEST's example and L2L's ``SPNoVizOptimizee``: 800 E + 200 I neurons, 200 s at 0.1 ms.

        The calcium time constant stays :data:`PARAMETERS`' 500 ms unless tuned (NEST's default is 10 s)."""
        return cls(**{"n_excitatory": 800, "n_inhibitory": 200, "t_sim_ms": 200_000.0, "record_ms": 1000.0,
                      "measure_ms": 10_000.0, "update_interval_ms": 1000.0, **changes})


def _require_nest() -> None:
    """Name the missing simulator without importing it: a NEST built without MPI exits (FATAL, code 127)
    when imported in an MPI rank; only the workers, which do not see the launcher, import it."""
    if importlib.util.find_spec("nest") is None:
        raise ImportError(f"the NEST optimizee needs the NEST simulator: {INSTALL_HINT}")


def _import_nest() -> Any:
    _require_nest()
    os.environ.setdefault("PYNEST_QUIET", "1")  # no banner from every worker
    import nest

    return nest


def _growth_curve(rate_per_s: float, set_point_hz: float) -> dict:
    return {"growth_curve": "gaussian", "growth_rate": rate_per_s * 1e-3, "continuous": False,
            "eta": 0.0, "eps": 0.01 * set_point_hz}


def simulate_network(params: Mapping[str, float], seed: int, network: Network = Network()) -> dict[str, np.ndarray]:
    """One NEST simulation from a fresh kernel: every ``record_ms`` the E and I rates (Hz, over that
    interval) and recurrent synapse counts; ``params`` missing from it take :data:`PARAMETERS`' defaults."""
    nest = _import_nest()
    p = {name: float(np.asarray(params.get(name, spec.default))) for name, spec in PARAMETERS.items()}
    nest.ResetKernel()
    nest.verbosity = nest.VerbosityLevel.ERROR
    nest.set(resolution=network.resolution_ms, rng_seed=int(seed) % (2**31 - 2) + 1,
             local_num_threads=network.threads, print_time=False)
    nest.structural_plasticity_update_interval = network.update_interval_ms
    for name, weight in (("sp_ex", network.psc_e), ("sp_in", network.psc_i)):
        nest.CopyModel("static_synapse", name, {"weight": weight, "delay": network.delay_ms})
    nest.structural_plasticity_synapses = {
        "sp_ex": {"synapse_model": "sp_ex", "pre_synaptic_element": "Axon_ex", "post_synaptic_element": "Den_ex"},
        "sp_in": {"synapse_model": "sp_in", "pre_synaptic_element": "Axon_in", "post_synaptic_element": "Den_in"},
    }
    calcium = {"tau_Ca": p["tau_ca_ms"], "beta_Ca": 10.0 / p["tau_ca_ms"]}  # Ca → 0.01 · rate in Hz
    exc = nest.Create("iaf_psc_alpha", network.n_excitatory, calcium)
    inh = nest.Create("iaf_psc_alpha", network.n_inhibitory, calcium)
    e_curve = _growth_curve(p["growth_rate_e"], p["set_point_e"])
    i_curve = _growth_curve(p["growth_rate_i"], p["set_point_i"])
    exc.synaptic_elements = {"Den_ex": e_curve, "Den_in": e_curve, "Axon_ex": e_curve}
    inh.synaptic_elements = {"Den_ex": i_curve, "Den_in": i_curve, "Axon_in": i_curve}
    noise = nest.Create("poisson_generator", params={"rate": network.background_rate_hz})
    nest.Connect(noise, exc + inh, "all_to_all", {"weight": network.psc_ext, "delay": network.delay_ms})
    recorder = nest.Create("spike_recorder")
    nest.Connect(exc + inh, recorder)
    nest.EnableStructuralPlasticity()

    n_samples = int(round(network.t_sim_ms / network.record_ms))
    series = {name: np.zeros(n_samples) for name in ("rate_e", "rate_i", "synapses_e", "synapses_i")}
    last_e = exc[-1].global_id  # E neurons are created first: node ids up to this one
    for k in range(n_samples):
        nest.Simulate(network.record_ms)
        senders = np.asarray(recorder.events["senders"])
        recorder.n_events = 0
        from_e = np.count_nonzero(senders <= last_e)
        series["rate_e"][k] = from_e / network.n_excitatory / network.record_ms * 1e3
        series["rate_i"][k] = (senders.size - from_e) / network.n_inhibitory / network.record_ms * 1e3
        series["synapses_e"][k] = sum(n["Axon_ex"]["z_connected"] for n in _as_list(exc.synaptic_elements))
        series["synapses_i"][k] = sum(n["Axon_in"]["z_connected"] for n in _as_list(inh.synaptic_elements))
    series["time_s"] = network.record_ms * np.arange(1, n_samples + 1) / 1e3
    return series


def _as_list(status: Any) -> list:
    return list(status) if isinstance(status, (list, tuple)) else [status]  # NEST returns a dict for one node


def fitness_of(series: Mapping[str, np.ndarray], network: Network = Network()) -> np.ndarray:
    """The three objectives (:data:`OBJECTIVES`) of a simulation's time series."""
    window = int(round(network.measure_ms / network.record_ms))
    rate_e, rate_i = np.mean(series["rate_e"][-window:]), np.mean(series["rate_i"][-window:])
    synapses = (series["synapses_e"][-1] + series["synapses_i"][-1]) / (network.n_excitatory + network.n_inhibitory)
    return np.array([abs(rate_e - network.target_rate_e_hz) / network.target_rate_e_hz,
                     abs(rate_i - network.target_rate_i_hz) / network.target_rate_i_hz,
                     abs(synapses - network.target_synapses) / network.target_synapses])


def simulate_fitness(params: Mapping[str, float], seed: int, network: Network = Network()) -> np.ndarray:
    """``simulate(individual, seed)`` for the worker pool: :func:`fitness_of` one :func:`simulate_network`."""
    return fitness_of(simulate_network(params, seed, network), network)


def structural_plasticity_optimizee(
    network: Network | None = None,
    *,
    paper_scale: bool = False,
    tune: Sequence[str] = TUNED,
    lower: Mapping[str, float] | None = None,
    upper: Mapping[str, float] | None = None,
    n_workers: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    **pool_options: Any,
):
    """The structural-plasticity network as an ``l2ljax.Optimizee`` scored in a worker pool.

    network:      the :class:`Network` (default: CI size; ``paper_scale=True``: ``Network.paper_scale()``).
    tune:         the names of :data:`PARAMETERS` an individual holds (the others keep their defaults).
    lower, upper: bounds that replace those of :data:`PARAMETERS` for some names.
    n_workers, timeout, retries, pool_options: the worker pool's (``l2ljax.worker_pool_optimizee``).

    ``problem.info["x0"]`` is NEST's example setting, the initial guess to start optimizers from;
    ``problem.fn.pool.close()`` stops the workers.
    """
    _require_nest()  # the missing simulator is named here, not in every worker
    from l2ljax.optimizees.external import worker_pool_optimizee

    if network is not None and paper_scale:
        raise ValueError("give either network or paper_scale=True, not both")
    network = Network.paper_scale() if paper_scale else (network or Network())
    unknown = sorted(set(tune) - set(PARAMETERS))
    if unknown or not tune:
        raise ValueError(f"tune names {unknown or 'nothing'}; choose among {sorted(PARAMETERS)}")
    for given in (lower or {}, upper or {}):
        if set(given) - set(tune):
            raise ValueError(f"bounds given for {sorted(set(given) - set(tune))}, which are not tuned {list(tune)}")
    bounds = {name: ((lower or {}).get(name, PARAMETERS[name].lower), (upper or {}).get(name, PARAMETERS[name].upper))
              for name in tune}
    for name, (lo, hi) in bounds.items():
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"bounds of {name} must be finite with lower < upper, got ({lo}, {hi})")
    template = {name: np.float32(0.0) for name in tune}
    problem = worker_pool_optimizee(
        functools.partial(simulate_fitness, network=network), template,
        lower={name: np.float32(lo) for name, (lo, hi) in bounds.items()},
        upper={name: np.float32(hi) for name, (lo, hi) in bounds.items()},
        weights=WEIGHTS, n_workers=n_workers, timeout=timeout, retries=retries,
        name="nest-structural-plasticity", **pool_options)
    problem.info.update(network=dataclasses.asdict(network), objectives=list(OBJECTIVES),
                        x0={name: float(np.clip(PARAMETERS[name].default, *bounds[name])) for name in tune})
    return problem
