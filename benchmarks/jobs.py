"""The loop every load script runs (``loadgen.py``, ``openloop.py``, ``ycsbload.py``,
``clientbench.py``, ``apibench.py``): print ``READY``, then answer each JSON line
on stdin with one JSON line, a failure as ``{"error": TRACEBACK}``.

The scripts run by path (``python benchmarks/loadgen.py``), so each puts the
repository root on ``sys.path`` before importing this module.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["serve"]


def serve(answer: Callable[[dict[str, Any]], Any]) -> int:
    """Print ``READY``, then ``answer`` each job read from stdin until it ends; 0."""
    print("READY", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = answer(json.loads(line))
        except BaseException:
            result = {"error": traceback.format_exc()}
        print(json.dumps(result), flush=True)
    return 0
