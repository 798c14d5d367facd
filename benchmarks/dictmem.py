"""The memory baseline: a bare Python process holding the same data in a plain dict-of-dict.

``python dictmem.py N`` prints ``READY``, waits for a line on stdin, then builds
``{"mem": {"k0000000": "0000000000", ...}}`` with N keys (the same keys and 10-byte
values the benchmark PUTs into a node), prints ``DONE``, and waits for stdin to close.
The harness reads this process's VmRSS from /proc before and after, as it does a node's.
"""

from __future__ import annotations

import sys


def main() -> int:
    count = int(sys.argv[1])
    print("READY", flush=True)
    sys.stdin.readline()
    buckets: dict[str, dict[str, str]] = {}
    bucket = buckets.setdefault("mem", {})
    for i in range(count):
        bucket[f"k{i:07d}"] = f"{i:010d}"
    print("DONE", len(buckets["mem"]), flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
