"""Meta-learned priors on sinusoids: LSNN by BPTT and by ES, LSTM, untrained and zero baselines.

Bellec et al. (NeurIPS 2018) on the task family of MAML. Every outer loop goes through
``l2ljax.run``. Test: 1,000 unseen tasks from a fixed key; MSE after k observed examples.

    PYTHONPATH=. python benchmarks/l2l_meta.py --out benchmarks/results_l2l_meta.json \
        --plot benchmarks/l2l_meta_predictions.png
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import l2ljax
from benchmarks.common import machine_info, write_report
from l2ljax.optimizees.meta import SequenceRegression, SinusoidTasks
from l2ljax.optimizers.bptt import BPTT
from l2ljax.snn import LSNN, LSTM, LSNNConfig

SHOWN_K = (0, 1, 2, 3, 5, 10, 15, 19)


def bptt(meta: SequenceRegression, params0, n: int, lr: float) -> tuple[object, float, float]:
    problem = meta.optimizee(jax.random.key(11), gradient=True)
    opt = BPTT(problem, optax.adam(lr))
    start = time.perf_counter()
    result = l2ljax.run(opt, problem, jax.random.key(12), n, x0=params0, summary=True)
    return opt.current(result.state), time.perf_counter() - start, float(result.state.inner.loss)


def evolution(meta: SequenceRegression, params0, n: int, pop: int, lr: float, sigma: float):
    problem = meta.optimizee(jax.random.key(11), gradient=False)
    opt = l2ljax.EvolutionStrategies(problem, pop_size=pop)
    params = opt.default_params.replace(learning_rate=lr, noise_std=sigma)
    start = time.perf_counter()
    result = l2ljax.run(opt, problem, jax.random.key(13), n, x0=params0, params=params, summary=True)
    return problem.space.unravel(result.state.inner.theta), time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bptt-steps", type=int, default=6000)
    p.add_argument("--lstm-steps", type=int, default=3000)
    p.add_argument("--es-generations", type=int, default=900)
    p.add_argument("--es-pop", type=int, default=32)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--out")
    p.add_argument("--plot")
    args = p.parse_args()

    tasks = SinusoidTasks(n_points=20)
    test = tasks.sample(jax.random.key(2026), args.n_test)  # fixed key, never used for training
    lsnn = SequenceRegression(LSNN(LSNNConfig(n_lif=50, n_alif=50, input_gain=6.0)), tasks, steps_per_example=10,
                              batch_size=32, tuning_curves=16)
    lstm = SequenceRegression(LSTM(hidden=64), tasks, steps_per_example=1, batch_size=32)
    lsnn0, lstm0 = lsnn.init(jax.random.key(1)), lstm.init(jax.random.key(1))

    rows, times = {}, {}
    rows["zero predictor"] = np.mean(np.asarray(test.ys, np.float64) ** 2, axis=0)
    rows["LSNN untrained"] = lsnn.mse_by_position(lsnn0, test.xs, test.ys)
    lsnn_bptt, times["LSNN BPTT"], _ = bptt(lsnn, lsnn0, args.bptt_steps, 5e-3)
    rows["LSNN BPTT (Adam)"] = lsnn.mse_by_position(lsnn_bptt, test.xs, test.ys)
    lsnn_es, times["LSNN ES"] = evolution(lsnn, lsnn0, args.es_generations, args.es_pop, 0.005, 0.02)
    rows["LSNN ES"] = lsnn.mse_by_position(lsnn_es, test.xs, test.ys)
    lstm_bptt, times["LSTM BPTT"], _ = bptt(lstm, lstm0, args.lstm_steps, 3e-3)
    rows["LSTM BPTT (Adam)"] = lstm.mse_by_position(lstm_bptt, test.xs, test.ys)

    zero_end = rows["zero predictor"][-1]
    report = {
        "machine": machine_info(), "n_test_tasks": args.n_test, "n_points": tasks.n_points,
        "lsnn": {"neurons": "50 LIF + 50 ALIF", "steps_per_example": 10, "tuning_curves": 16,
                 "params": int(sum(x.size for x in jax.tree_util.tree_leaves(lsnn0)))},
        "lstm": {"hidden": 64, "params": int(sum(x.size for x in jax.tree_util.tree_leaves(lstm0)))},
        "budgets": {"bptt_steps": args.bptt_steps, "lstm_steps": args.lstm_steps, "batch": 32,
                    "es_generations": args.es_generations, "es_pop": args.es_pop},
        "train_seconds": times,
        "mse_by_k": {name: [float(v) for v in row] for name, row in rows.items()},
        "end_over_zero": {name: float(row[-1] / zero_end) for name, row in rows.items()},
    }
    write_report(report, args.out)
    print("| model | " + " | ".join(f"k={k}" for k in SHOWN_K) + " | end / zero |")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in SHOWN_K) + f" | {row[-1] / zero_end:.3f} |")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharey=True)
        grid = jnp.linspace(-5, 5, 200)
        for i, ax in enumerate(axes):
            xs, ys = test.xs[i:i + 1], test.ys[i:i + 1]
            ax.plot(grid, test.amplitude[i] * jnp.sin(grid + test.phase[i]), "k-", lw=1, label="task")
            for label, meta, params, mark in (("LSNN BPTT", lsnn, lsnn_bptt, "o"), ("LSNN ES", lsnn, lsnn_es, "s"),
                                             ("LSTM", lstm, lstm_bptt, "^")):
                pred = np.asarray(meta.predict(params, xs, ys))[0]
                ax.scatter(np.asarray(xs[0]), pred, marker=mark, s=np.linspace(6, 40, tasks.n_points),
                           label=label, alpha=0.8)
            ax.set_title(f"task {i}: A={float(test.amplitude[i]):.2f}, φ={float(test.phase[i]):.2f}")
            ax.set_xlabel("x (marker size grows with k)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=90)


if __name__ == "__main__":
    main()
