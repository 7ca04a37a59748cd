"""The command line: the main job end to end at a tiny size, and run plots."""

import csv
import os
from pathlib import Path

import jax
import pytest

import l2ljax
from l2ljax.cli import main

MNIST_DIR = Path(os.environ.get("L2LJAX_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST not found at {MNIST_DIR}")
def test_main_job_writes_curve_plot_trajectory_and_resumes(tmp_path, capsys, monkeypatch):
    tested = []  # the CSV's accuracy must be that of the averaged mean (default --average-decay 0.9)
    averaged = l2ljax.EnsembleKalmanFilter.averaged_mean_flat
    monkeypatch.setattr(l2ljax.EnsembleKalmanFilter, "averaged_mean_flat",
                        lambda self, state: tested.append((float(state.params.average_decay), self.additive_generator))
                        or averaged(self, state))
    out = tmp_path / "run"
    argv = ["mnist-enkf", "--data-dir", str(MNIST_DIR), "--members", "8", "--iterations", "4", "--eval-every", "2",
            "--train-subset", "640", "--test-subset", "200", "--out", str(out)]
    main(argv)
    with open(out / "test_accuracy.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["iteration", "test_accuracy", "seconds"]
    assert [int(r[0]) for r in rows[1:]] == [2, 4]
    assert (out / "test_error.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert l2ljax.load_trajectory(out)["generation"].tolist() == [0, 1, 2, 3]
    assert "final test accuracy of the averaged ensemble mean" in capsys.readouterr().out
    assert [t[0] for t in tested] == pytest.approx([0.9, 0.9])
    assert {t[1] for t in tested} == {"hash"}  # the default noise generator
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    assert "add --resume" in capsys.readouterr().err
    main([*argv, "--iterations", "6", "--resume"])  # the later --iterations wins
    assert l2ljax.load_trajectory(out)["generation"].tolist() == list(range(6))


def test_plot_of_a_run_directory(tmp_path):
    problem = l2ljax.function_optimizee("rastrigin", 2)
    l2ljax.run(l2ljax.RandomSearch(problem, pop_size=8), problem, jax.random.key(0), 5, directory=tmp_path)
    main(["plot", str(tmp_path)])
    assert (tmp_path / "progress.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_of_a_summary_run(tmp_path):
    problem = l2ljax.function_optimizee("rastrigin", 2)
    l2ljax.run(l2ljax.RandomSearch(problem, pop_size=8), problem, jax.random.key(0), 5, directory=tmp_path,
               summary=True)
    main(["plot", str(tmp_path), "--output", str(tmp_path / "p.png")])
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
