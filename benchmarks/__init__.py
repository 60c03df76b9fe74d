"""Benchmarks of the HTTP plane; run `python benchmarks/bench_api.py --help`."""
