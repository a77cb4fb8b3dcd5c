"""Benchmark grids and reports (tables, plots)."""
