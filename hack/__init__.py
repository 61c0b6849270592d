"""Developer tooling (the demo, chart helpers), importable from the repository root."""
