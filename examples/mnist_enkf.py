"""The main job: the ensemble Kalman filter trains the LOD CNN on MNIST (same as `l2ljax mnist-enkf`).

    python examples/mnist_enkf.py --download            # CPU size: J=500, 400 iterations
    python examples/mnist_enkf.py --full --data-dir DIR  # LOD paper: J=5000, 7,500 iterations (GPU)
"""

from l2ljax.cli import main

if __name__ == "__main__":
    import sys

    main(["mnist-enkf", *sys.argv[1:]])
