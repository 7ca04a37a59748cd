"""Meta-learn a prior over sinusoids in a spiking network (Bellec et al. 2018), outer loop by BPTT.

The LSNN sees x_t and the previous target and predicts y_t; after meta-training it fits a new
sinusoid from the examples of one sequence with fixed weights. The gradient outer loop runs through
``l2ljax.run`` like every optimizer (here with a directory: trajectory + checkpoint, resumable).

    PYTHONPATH=. python examples/l2l_sinusoid_lsnn.py --steps 2000 --directory /tmp/lsnn-run
"""

import argparse

import jax
import numpy as np
import optax

import l2ljax
from l2ljax.optimizees.meta import SequenceRegression, SinusoidTasks
from l2ljax.optimizers.bptt import BPTT
from l2ljax.snn import LSNN, LSNNConfig

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=1000)
p.add_argument("--directory")
p.add_argument("--resume", action="store_true")
args = p.parse_args()

tasks = SinusoidTasks(n_points=20)
meta = SequenceRegression(LSNN(LSNNConfig(n_lif=50, n_alif=50, input_gain=6.0)), tasks, steps_per_example=10,
                          batch_size=32, tuning_curves=16)
problem = meta.optimizee(jax.random.key(11), gradient=True)
opt = BPTT(problem, optax.adam(5e-3))
params0 = meta.init(jax.random.key(1))
result = l2ljax.run(opt, problem, jax.random.key(12), args.steps, x0=params0, summary=True, progress=True,
                    directory=args.directory, resume=args.resume)

test = tasks.sample(jax.random.key(2026), 1000)
zero = np.mean(np.asarray(test.ys) ** 2, axis=0)
for name, params in (("untrained", params0), ("meta-trained", opt.current(result.state))):
    mse = meta.mse_by_position(params, test.xs, test.ys)
    print(f"{name:>12}: MSE after k examples " + " ".join(f"k={k}:{mse[k]:.2f}" for k in (0, 1, 2, 5, 10, 19))
          + f"  (end / zero predictor = {mse[-1] / zero[-1]:.3f})")
