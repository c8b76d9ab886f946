"""Run every benchmark in turn: `python -m benchmarks` (from the repository root).

PostgreSQL and Redis runs need COSTGUARD_BENCH_POSTGRES_URL / COSTGUARD_BENCH_REDIS_URL (or the
test URLs); stores without a URL are skipped. The Redis benchmark starts its own pinned
redis-server. Results and the machine they came from are in docs/performance.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = [
    ["overhead.py"],
    ["throughput.py"],
    ["hot_row.py"],
    ["burst.py", "--rounds", "1"],
    ["roundtrips.py"],
    ["scaling.py", "--sizes", "1000,100000,1000000", "--customers", "10,100000"],
    ["memory.py"],
    ["alerts_bench.py"],
    ["redis_bench.py"],
    ["proxy_bench.py"],
]


def main() -> int:
    failed = 0
    for script, *args in SCRIPTS:
        path = HERE / script
        if not path.exists():
            continue
        print(f"\n=== {script} {' '.join(args)}", flush=True)
        failed += subprocess.run([sys.executable, str(path), *args], check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
