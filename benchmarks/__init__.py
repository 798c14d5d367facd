"""pyrokv's benchmark suite: ``python -m benchmarks.run`` (see benchmarks/README.md).

A package so that ``run``, ``harness``, ``cases`` and ``results`` import each other
as ``benchmarks.*``; the helper scripts beside them (``loadgen.py``,
``baselines.py``, ``apibench.py``, ``dictmem.py``) run as processes of their own.
"""
