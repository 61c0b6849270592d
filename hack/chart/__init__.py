"""Chart tooling: rendering with helm (helmchart), the README values table (values_table)."""
