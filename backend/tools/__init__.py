"""Benchmark and diagnosis tools for the backend; the serving path never imports them."""
