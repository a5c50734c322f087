"""Workflow resolution overhead: a fan-out / fan-in workflow vs. the same no-op tasks without dependencies.

Both shapes are N ``BENCH_NOOP`` tasks drained by one ``flask tasks worker`` process on
PostgreSQL (the engine's default settings), queued while the type is paused and measured from
the first start to the last finish, read from the table (``drain.drain_window``):

* **plain**: N tasks from ``submit_many``, no workflow;
* **workflow**: one workflow of N tasks: a root, N - 2 tasks after it, a sink after all of
  them (every finish releases or counts down a dependent in its own transaction), and an
  ``on_finish`` callback (not counted in N).

The runs alternate (plain, workflow, plain, workflow) so load from elsewhere on the machine
hits both alike; the figure is the ratio of the best workflow time to the best plain time.
Run it alone with ``python -m bench.workflows`` or ``python -m bench.run --only workflows``.
"""

from __future__ import annotations

from typing import Any

from .common import Context, Process, bench_app, dispose, pg_database
from .drain import (
    NOOP,
    concurrency,
    drain_window,
    preload,
    reset_tables,
    set_paused,
    start_workers_paused,
    wait_drained,
)

NAME = "workflows"
REPEATS = 2


def submit_fan_out_fan_in(app: Any, count: int) -> None:
    """One workflow: root -> (count - 2) parts -> sink, with an on_finish callback."""
    from webapp.tasks.service import AsyncTaskService

    parts = [{"key": f"p{i}", "task_type": NOOP, "payload": {"n": i}, "after": ["root"]} for i in range(count - 2)]
    tasks = ([{"key": "root", "task_type": NOOP, "payload": {}}] + parts
             + [{"key": "sink", "task_type": NOOP, "payload": {}, "after": [p["key"] for p in parts]}])
    with app.app_context():
        AsyncTaskService().submit_workflow(tasks=tasks, name="bench", callbacks={
            "on_finish": {"task_type": NOOP, "payload": {"callback": True}}})


def drain_seconds(ctx: Context, pg_url: str, count: int, shape: str) -> float:
    """Seconds from the first start to the last finish of ``count`` tasks queued as ``shape``."""
    app = bench_app(pg_url, ASYNC_TASK_WORKFLOW_MAX_TASKS=count)
    procs: list[Process] = []
    try:
        reset_tables(app)
        set_paused(app, NOOP, True)
        if shape == "plain":
            preload(app, count)
        else:
            submit_fan_out_fan_in(app, count)
        procs = start_workers_paused(ctx, app, pg_url, 1, f"{NAME}-{shape}",
                                     ASYNC_TASK_CONCURRENCY=concurrency())
        set_paused(app, NOOP, False)
        expected = count if shape == "plain" else count + 1  # the callback
        wait_drained(app, procs, expected)
        ok, not_ok, seconds = drain_window(app)
        if ok != expected:
            raise RuntimeError(f"{shape}: {ok} of {expected} tasks succeeded ({not_ok} did not)")
        return seconds
    finally:
        for proc in procs:
            proc.stop()
        dispose(app)


def run(ctx: Context) -> None:
    """The plain and the workflow drain, alternated; figures: both times and their ratio."""
    count = 1_000 if ctx.quick else 10_000
    times: dict[str, list[float]] = {"plain": [], "workflow": []}
    with pg_database(NAME) as pg_url:
        for _ in range(REPEATS):
            for shape in ("plain", "workflow"):
                times[shape].append(drain_seconds(ctx, pg_url, count, shape))
    best = {shape: min(values) for shape, values in times.items()}
    shown = {shape: ", ".join(f"{v:.2f}" for v in values) for shape, values in times.items()}
    ctx.add(NAME, f"postgresql, {count:,} no-op tasks, no dependencies", best["plain"], "s",
            f"1 worker; best of {REPEATS}: {shown['plain']}")
    ctx.add(NAME, f"postgresql, {count:,}-task fan-out/fan-in workflow", best["workflow"], "s",
            f"root -> {count - 2:,} -> sink + on_finish callback; best of {REPEATS}: {shown['workflow']}")
    ctx.add(NAME, "fan-out/fan-in overhead (workflow / plain)", best["workflow"] / best["plain"], "x",
            "the issue asks for at most 1.25")


if __name__ == "__main__":
    import shutil

    from .common import scratch_dir

    context = Context(quick=False, scratch=scratch_dir())
    try:
        run(context)
    finally:
        shutil.rmtree(context.scratch, ignore_errors=True)
