"""Benchmarks of `pool` against its peers; run ``python benchmarks/run.py``.

A package so that the functions run in workers (`benchmarks._tasks`) import
by the same name in every process, under every start method.
"""
