"""Benchmarks for mppool: pytest-benchmark suites and a same-run comparison with peer pools.

This is a package (rather than a loose folder of scripts) so that workload functions have a
stable, importable module path, ``bench.workloads``. Pools pickle functions by reference, so a
worker process must be able to import the module a function lives in under the same name.
"""
