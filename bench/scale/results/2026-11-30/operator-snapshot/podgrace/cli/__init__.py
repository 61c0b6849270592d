"""The `podgrace` command line: `run` (the controller), `render` and `audit` (the pure core, offline)."""
