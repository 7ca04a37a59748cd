"""The README's ten lines: minimise a function of a pytree with the cross-entropy method."""

import jax
import jax.numpy as jnp

import l2ljax


def sphere(params, key):  # scores ONE individual (any pytree)
    return jnp.sum(params["w"] ** 2) + params["b"] ** 2


problem = l2ljax.Optimizee.create(sphere, {"w": jnp.zeros(3), "b": jnp.zeros(())},
                                  lower=-5.0, upper=5.0, weights=(-1.0,))  # -1: minimise
opt = l2ljax.CrossEntropy(problem, pop_size=64, distribution=l2ljax.NoisyGaussian())
result = l2ljax.run(opt, problem, jax.random.key(0), n_generations=200)
print(result.best, result.best_fitness)
