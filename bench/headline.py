"""The headline drain ratios alone, in a few minutes: ``python -m bench.headline``.

Ours (PostgreSQL, one worker process, 10,000 no-op tasks, batch 10 and 100, as shipped and
tuned, with and without Redis locks) against pgqueuer at the same batch sizes, every figure best
of ``HEADLINE_REPEATS``, all in one run so that the ratios hold on a machine whose speed moves
between days. The full ``make bench`` measures the same rows among many others; this is for
checking an engine change quickly. Prints a table; writes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .common import Context, pg_database, redis_available, scratch_dir
from .drain import HEADLINE_REPEATS, TUNED, drain_once
from .peers import _dsn, peer_python, run_script

JOBS = 10_000


def pgqueuer_rate(python: Path, batch: int, attempt: int) -> float:
    """One pgqueuer drain of JOBS jobs on a fresh database (as ``bench.peers`` runs it)."""
    with pg_database(f"headline_pgqueuer_{batch}_{attempt}", migrate_schema=False) as peer_url:
        result = run_script(python, "pgqueuer_drain.py",
                            ["--dsn", _dsn(peer_url), "--jobs", str(JOBS), "--batch-size", str(batch)], 600)
    return float(result["rate"])


def main() -> int:
    """Measure and print ours / pgqueuer for batch 10 and 100."""
    ctx = Context(quick=False, scratch=scratch_dir())
    python = peer_python("pgqueuer")
    rows: list[tuple[str, float, list[float], float]] = []
    with pg_database("headline") as pg_url:
        for batch in (10, 100):
            peer_rates = [pgqueuer_rate(python, batch, attempt) for attempt in range(HEADLINE_REPEATS)]
            peer = max(peer_rates)
            print(f"pgqueuer batch {batch}: {peer:,.0f} jobs/s ({', '.join(f'{r:,.0f}' for r in peer_rates)})",
                  flush=True)
            variants: list[tuple[str, bool, dict[str, Any]]] = [
                ("as shipped", False, {}), ("tuned", False, TUNED(batch))]
            if redis_available():
                variants.append(("as shipped + Redis locks", True, {}))
            for label, redis, settings in variants:
                rates = [drain_once(ctx, "postgres", 1, batch, JOBS, pg_url, redis=redis, **settings)
                         for _ in range(HEADLINE_REPEATS)]
                ours = max(rates)
                rows.append((f"batch {batch}, {label}", ours, rates, peer))
                print(f"ours batch {batch} {label}: {ours:,.0f} tasks/s -> {ours / peer:.2f}x pgqueuer",
                      flush=True)
    print("\n| ours (1 worker process, PostgreSQL) | tasks/s | pgqueuer, same batch | ratio |")
    print("| --- | --- | --- | --- |")
    for label, ours, rates, peer in rows:
        print(f"| {label} (best of {', '.join(f'{r:,.0f}' for r in rates)}) | {ours:,.0f} | {peer:,.0f} "
              f"| {ours / peer:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
