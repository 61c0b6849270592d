"""The pure core: profiles, workloads and the planner. No Kubernetes I/O, no Kopf, no metrics.

Everything here is a function of its inputs; the controller, `podgrace render` and `podgrace audit` all
call `planner.plan`. An import-linter contract (pyproject.toml) keeps it so.
"""
