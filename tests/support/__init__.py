"""Helpers shared by e2e tests, benchmarks and the demo: chart install, operator process, Prometheus."""
