"""Hyperparameter optimisation over whole trainings: CMA-ES tunes SGD for an MNIST MLP.

Each individual is a complete 300-step training (a ``lax.scan``); a generation trains all of them in
one compiled program (vmapped; on a CPU two at a time, which is faster there: benchmarks/RESULTS.md,
9b). Fitness: accuracy on a validation split held out from training.

    python examples/l2l_hpo_mnist.py
"""

import argparse

import jax
import optax

import l2ljax
from l2ljax import data
from l2ljax.models import Mlp
from l2ljax.optimizees.inner import Hyperparameter, InnerTraining

cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
cli.add_argument("--data-dir", help="MNIST IDX files (default: $L2LJAX_MNIST_DIR, else ~/.cache/l2ljax/mnist)")
cli.add_argument("--download", action="store_true", help="fetch MNIST if it is missing")
cli.add_argument("--layout", choices=["auto", "vmap", "cpu"], default="auto",
                 help="vmap: all 12 trainings batched (GPU); cpu: 2 at a time (1.9x faster on 2 cores); auto: backend")
args = cli.parse_args()
cpu_layout = args.layout == "cpu" or (args.layout == "auto" and jax.default_backend() == "cpu")
splits = data.flat_splits(data.load_mnist(args.data_dir, download=args.download))
hpo = InnerTraining(Mlp(hidden=(64,), use_bias=True), lambda h: optax.sgd(h["learning_rate"], momentum=h["momentum"]),
                    {"learning_rate": Hyperparameter(1e-3, 3.0, log=True), "momentum": Hyperparameter(0.0, 0.99),
                     "init_scale": Hyperparameter(0.1, 3.0, log=True)},
                    train=splits["train"], validation=splits["validation"], n_steps=300, batch_size=64)
problem = hpo.optimizee(jax.random.key(0), chunk=2 if cpu_layout else None)
result = l2ljax.run(l2ljax.CMAES(problem, pop_size=12), problem, jax.random.key(1), 8, progress=True)
print("best validation accuracy", float(result.best_fitness[0]), "at", hpo.values(result.best))
