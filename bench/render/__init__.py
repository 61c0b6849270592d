"""Speed of `podgrace render` on a large stream: `python -m bench.render [--deployments 5000]`."""
