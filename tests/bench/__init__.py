"""Benchmarks: each figure beside a floor or a peer measured in the same run.

Run them with ``python -m tests.bench`` (full) or ``python -m tests.bench --quick``;
``pytest -m bench tests/bench -s`` runs the same suite (``CHATCTL_BENCH=quick`` for quick).
The default ``pytest`` run never collects them.
"""
