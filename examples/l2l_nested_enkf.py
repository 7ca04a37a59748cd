"""Nested L2L: an outer GA tunes the inner EnKF (γ, ensemble size, repetitions) on MNIST.

Every inner EnKF run of a generation is one vmapped program although ensemble sizes differ: each
runs 30 members of which the first J are valid (masked statistics), and 3 updates per batch of
which the first `repetitions` are applied.

    PYTHONPATH=. python examples/l2l_nested_enkf.py
"""

import jax
import numpy as np

import l2ljax
from l2ljax import data
from l2ljax.models import Mlp
from l2ljax.optimizees.inner import NestedEnKF

m = data.load_mnist("/work/shared/data/mnist")
x = data.normalize(m.train_images).reshape(len(m.train_images), -1)
y = m.train_labels.astype(np.int32)
nested = NestedEnKF(Mlp(hidden=(10,)), train=(x[:50000], y[:50000]), validation=(x[50000:], y[50000:]),
                    n_batches=50, batch_size=32, init_std=0.1)
problem = nested.optimizee(jax.random.key(0))
opt = l2ljax.GeneticAlgorithm(problem, pop_size=8)
result = l2ljax.run(opt, problem, jax.random.key(1), 6, params=opt.default_params.replace(ind_prob=0.5, mut_par=0.5),
                    progress=True)
gamma, size, reps = (np.asarray(v).item() for v in nested.settings(result.best))
print(f"best validation accuracy {float(result.best_fitness[0]):.3f}: gamma={gamma:.4f}, J={size}, repetitions={reps}")
