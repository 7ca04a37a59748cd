"""Every optimizer on every L2L benchmark function, one table (same as `l2ljax functions`).

    python examples/functions_table.py --generations 200
"""

from l2ljax.cli import main

if __name__ == "__main__":
    import sys

    main(["functions", *sys.argv[1:]])
