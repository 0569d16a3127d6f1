"""Benchmarks: one command per measurement (`python -m bench.<name>`), `make bench` for all."""
