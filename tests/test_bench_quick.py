"""``python -m bench.run --quick`` works: every benchmark runs (small) and reports a figure.

Not a timing test: no figure is compared with anything; it checks that the harness runs end to
end against real PostgreSQL, Redis, gunicorn and worker processes, so ``make bench`` stays
usable as the engine changes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.run import BENCHMARKS

from .conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(260)]


def test_quick_bench_reports_every_benchmark(pg_url: str, redis_url: str) -> None:
    """Exit 0, and for each benchmark a figure line or an explicit "skipped: <reason>"."""
    done = subprocess.run([sys.executable, "-m", "bench.run", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=200)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    lines = done.stdout.splitlines()
    for name in BENCHMARKS:
        reported = [line for line in lines if line.strip().startswith(f"{name} |")]
        assert reported, f"benchmark {name} printed nothing:\n{output[-4000:]}"
        figures = [line for line in reported if "skipped:" not in line and "FAILED" not in line]
        skipped = [line for line in reported if "skipped:" in line]
        assert figures or skipped, f"benchmark {name}: no figure and no reason:\n{reported}"
    assert "peers are skipped in quick mode" in done.stdout
    assert "FAILED" not in done.stdout
