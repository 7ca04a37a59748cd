"""Many hyperparameter settings and seeds in ONE compiled program: vmap over the params pytree.

Sweeps the ES learning rate on Ackley-10d, 4 seeds each, and prints the mean best fitness.
"""

import jax
import jax.numpy as jnp
import numpy as np

import l2ljax

problem = l2ljax.function_optimizee("ackley", 10)
opt = l2ljax.EvolutionStrategies(problem, pop_size=50)
learning_rates = jnp.array([0.02, 0.05, 0.1, 0.2, 0.5])
seeds = jnp.arange(4)
step = l2ljax.make_step(opt, problem, keep_population=False)


def best_fitness(learning_rate, seed):
    key = jax.random.key(seed)
    params = opt.default_params.replace(learning_rate=learning_rate, noise_std=0.5)
    state = opt.init(key, params)
    state, _ = jax.lax.scan(lambda s, _: (step(s, key)[0], None), state, None, length=300)
    return -state.best_score  # score = -f for a minimised function


sweep = jax.jit(jax.vmap(jax.vmap(best_fitness, in_axes=(None, 0)), in_axes=(0, None)))
results = np.asarray(sweep(learning_rates, seeds))
for lr, row in zip(np.asarray(learning_rates), results, strict=True):
    print(f"learning_rate {lr:5.2f}: best f mean {row.mean():.4g} over {len(row)} seeds")
