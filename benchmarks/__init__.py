"""Benchmarks: side-by-side measurements written as JSON under ``benchmarks/results/``.

Run them all with ``python -m benchmarks`` (a few minutes on 2 cores). Each compares variants in
one process or one run, so the ratios are what to read: these machines are shared and noisy.
"""
