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

    def record(self, state):
        p = state.params
        tested.append((float(p.average_decay), self.additive_generator, float(p.gamma), float(p.additive_inflation)))
        return averaged(self, state)

    monkeypatch.setattr(l2ljax.EnsembleKalmanFilter, "averaged_mean_flat", record)
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
    assert [v for t in tested for v in t[2:]] == pytest.approx([0.2, 0.08] * 2)  # the defaults of RESULTS §11
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    assert "add --resume" in capsys.readouterr().err
    main([*argv, "--iterations", "6", "--resume"])  # the later --iterations wins
    assert l2ljax.load_trajectory(out)["generation"].tolist() == list(range(6))
    assert "keeps the run's" not in capsys.readouterr().err  # a run of today's defaults changes nothing


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST not found at {MNIST_DIR}")
def test_resume_keeps_the_hyperparameters_a_run_started_with(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["mnist-enkf", "--data-dir", str(MNIST_DIR), "--members", "8", "--eval-every", "2",
            "--train-subset", "640", "--test-subset", "200", "--out", str(out)]
    main([*argv, "--iterations", "2", "--gamma", "0.1", "--additive-inflation", "0.06"])  # older defaults
    capsys.readouterr()
    main([*argv, "--iterations", "4", "--resume"])  # today's defaults differ: the run's own values win
    err = capsys.readouterr().err
    assert "keeps the run's --gamma 0.1 (today's default: 0.2)" in err
    assert "keeps the run's --additive-inflation 0.06" in err
    assert "--average-decay" not in err  # the same value in float32: not reported as kept
    params = l2ljax.trajectory.read_meta(out)["params"]
    assert params[".gamma"] == pytest.approx(0.1) and params[".additive_inflation"] == pytest.approx(0.06)
    assert l2ljax.load_trajectory(out)["generation"].tolist() == [0, 1, 2, 3]
    with pytest.raises(SystemExit) as exit_info:  # a value given explicitly is never overridden
        main([*argv, "--iterations", "6", "--resume", "--gamma", "0.3"])
    assert exit_info.value.code == 1
    assert "other hyperparameters" in capsys.readouterr().err


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
