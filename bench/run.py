"""Entry point: ``python -m bench.run [--quick] [--only NAME ...]``.

Runs the benchmarks in order, prints one line per figure as it is measured and a table at the
end, and (full runs only, without ``--only``) writes docs/benchmarks.md. A benchmark that cannot
run here prints ``skipped: <reason>``; one that fails prints its error, and the run goes on
(the exit status is then 1).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime

from .common import Context, Skipped, scratch_dir

# name -> module (each has ``run(ctx)``), in the order they run and appear in the report.
BENCHMARKS: dict[str, str] = {
    "drain": "bench.drain",
    "limits": "bench.limits_drain",
    "pickup": "bench.pickup",
    "submit": "bench.submit",
    "console": "bench.console",
    "claim": "bench.claim",
    "memory": "bench.memory",
    "peers": "bench.peers",
    "workflows": "bench.workflows",
    "startup": "bench.startup",
}


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run of every benchmark (seconds each)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME",
                        help=f"run only these: {', '.join(BENCHMARKS)}")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: replace these benchmarks' figures in docs/benchmarks.json "
                             "(a full run's results) and re-render docs/benchmarks.md")
    args = parser.parse_args(argv)
    # A SIGTERM (or SIGINT from a shell that ignores it in background jobs) unwinds normally,
    # so worker processes are stopped and the benchmark databases dropped.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    selected = [name for name in BENCHMARKS if not args.only or name in args.only]
    ctx = Context(quick=args.quick, scratch=scratch_dir())
    statuses: dict[str, str] = {}
    durations: dict[str, float] = {}
    started = datetime.now(UTC)
    print(f"benchmarks ({'quick' if args.quick else 'full'}): {', '.join(selected)}", flush=True)
    try:
        for name in selected:
            statuses[name], durations[name] = _run_one(name, ctx)
    finally:
        shutil.rmtree(ctx.scratch, ignore_errors=True)
    _print_table(ctx, statuses, durations)
    failed = [name for name, status in statuses.items() if status.startswith("failed")]
    if not args.quick and not args.no_write and (not args.only or args.merge):
        from .report import merge_report, write_report

        if args.only:
            path = merge_report(ctx, statuses, durations)
        else:
            path = write_report(ctx, statuses, durations, started)
        print(f"wrote {path}")
    return 1 if failed else 0


def _run_one(name: str, ctx: Context) -> tuple[str, float]:
    print(f"== {name}", flush=True)
    began = time.monotonic()
    module = importlib.import_module(BENCHMARKS[name])
    runner: Callable[[Context], None] = module.run
    before = len(ctx.figures)
    try:
        runner(ctx)
        status = "ok"
    except Skipped as exc:
        status = f"skipped: {exc}"
        print(f"  {name:>10} | skipped: {exc}", flush=True)
    except Exception as exc:
        status = f"failed: {type(exc).__name__}: {exc}"
        print(f"  {name:>10} | FAILED: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc()
    if status == "ok" and len(ctx.figures) == before:
        status = "failed: measured nothing"
    return status, time.monotonic() - began


def _print_table(ctx: Context, statuses: dict[str, str], durations: dict[str, float]) -> None:
    width = max([len(f.name) for f in ctx.figures] + [20])
    print()
    print(f"{'benchmark':<10}  {'figure':<{width}}  {'value':>12}  unit")
    print("-" * (width + 40))
    for figure in ctx.figures:
        note = f"  ({figure.note})" if figure.note.startswith("skipped") else ""
        print(f"{figure.benchmark:<10}  {figure.name:<{width}}  {figure.shown():>12}  {figure.unit}{note}")
    print("-" * (width + 40))
    for name, status in statuses.items():
        print(f"{name:<10}  {status}  ({durations[name]:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
