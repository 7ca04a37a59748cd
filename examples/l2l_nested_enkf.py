"""Nested L2L: an outer GA tunes the inner EnKF (γ, ensemble size, repetitions) on MNIST.

Every inner EnKF run of a generation is one vmapped program although ensemble sizes differ: each
runs 30 members of which the first J are valid (masked statistics), and 3 updates per batch of
which the first `repetitions` are applied. On a CPU (``--layout auto`` there) the runs of a
generation go one at a time inside that program, each holding the smallest of 12/18/24/30 members
that fits its J: same numbers, a generation 2x faster on 2 cores than the full vmap (1.0 vs 2.1 s,
2026-12-02; it compiles ~4 s longer; benchmarks/RESULTS.md, 9c). The full vmap is the layout for a GPU.

    python examples/l2l_nested_enkf.py
"""

import argparse

import jax
import numpy as np

import l2ljax
from l2ljax import data
from l2ljax.models import Mlp
from l2ljax.optimizees.inner import NestedEnKF

cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
cli.add_argument("--data-dir", help="MNIST IDX files (default: $L2LJAX_MNIST_DIR, else ~/.cache/l2ljax/mnist)")
cli.add_argument("--download", action="store_true", help="fetch MNIST if it is missing")
cli.add_argument("--layout", choices=["auto", "vmap", "cpu"], default="auto",
                 help="vmap: every run batched (GPU); cpu: one run at a time in bucketed sizes; auto: by backend")
args = cli.parse_args()
cpu_layout = args.layout == "cpu" or (args.layout == "auto" and jax.default_backend() == "cpu")
splits = data.flat_splits(data.load_mnist(args.data_dir, download=args.download))
nested = NestedEnKF(Mlp(hidden=(10,)), train=splits["train"], validation=splits["validation"],
                    n_batches=50, batch_size=32, init_std=0.1,
                    ensemble_buckets=(12, 18, 24, 30) if cpu_layout else ())
problem = nested.optimizee(jax.random.key(0), chunk=1 if cpu_layout else None)
opt = l2ljax.GeneticAlgorithm(problem, pop_size=8)
result = l2ljax.run(opt, problem, jax.random.key(1), 6, params=opt.default_params.replace(ind_prob=0.5, mut_par=0.5),
                    progress=True)
gamma, size, reps = (np.asarray(v).item() for v in nested.settings(result.best))
print(f"best validation accuracy {float(result.best_fitness[0]):.3f}: gamma={gamma:.4f}, J={size}, repetitions={reps}")
