"""l2ljax: Learning to Learn (L2L) on JAX: batched outer-loop optimizers over vmapped inner loops."""

__version__ = "0.1.0"

from l2ljax import parallel, snn
from l2ljax.core import Evaluation, Optimizee, Optimizer, OptState, Space, make_evaluation
from l2ljax.optimizees import function_optimizee, worker_pool_optimizee
from l2ljax.optimizers import *  # noqa: F403 (the optimizers are the public API)
from l2ljax.optimizers import __all__ as _optimizers
from l2ljax.run import ProgressBar, RunResult, make_step, run, run_many
from l2ljax.trajectory import load_checkpoint, load_trajectory, save_checkpoint

__all__ = [
    "Evaluation", "OptState", "Optimizee", "Optimizer", "ProgressBar", "RunResult", "Space", "function_optimizee",
    "load_checkpoint", "load_trajectory", "make_evaluation", "make_step", "parallel", "run", "snn", "run_many",
    "save_checkpoint", "worker_pool_optimizee",
    *_optimizers,
]
