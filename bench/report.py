"""docs/benchmarks.md: machine, date, every figure, the targets of the performance issue, how to
reproduce. Written by a full ``python -m bench.run``."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import subprocess
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import PG_ADMIN_URL, REDIS_URL, ROOT, Context, Figure, psql_connect

REPORT = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "docs" / "benchmarks.json"


def machine() -> list[tuple[str, str]]:
    """(what, value) rows describing this machine and its services."""
    rows = [("CPU", _cpu_model()), ("cores (nproc)", str(os.cpu_count())), ("memory", _memory()),
            ("OS", f"{platform.system()} {platform.release()}"),
            ("Python", platform.python_version()), ("PostgreSQL", _postgres_version()),
            ("Redis", _redis_version())]
    with contextlib.suppress(OSError):
        rows.append(("load average at the end", " ".join(f"{v:.2f}" for v in os.getloadavg())))
    return rows


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _postgres_version() -> str:
    try:
        with psql_connect(PG_ADMIN_URL) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])
    except Exception as exc:
        return f"unreachable ({exc})"


def _redis_version() -> str:
    try:
        import redis

        return str(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).info("server")["redis_version"])
    except Exception as exc:
        return f"unreachable ({exc})"


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "webapp"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + (" (with uncommitted changes under webapp/)" if dirty else "")
    except Exception:
        return "unknown"


def _find(figures: list[Figure], benchmark: str, name: str) -> Figure | None:
    return next((f for f in figures if f.benchmark == benchmark and f.name == name), None)


def targets(figures: list[Figure], shared: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, goal, measured, met?) rows for the targets of the performance issue."""
    rows: list[tuple[str, str, str, str]] = []
    def keyed(rates: dict[str, float]) -> dict[tuple[str, int, int], float]:
        split = {tuple(key.split("|")): rate for key, rate in rates.items()}
        return {(k[0], int(k[1]), int(k[2])): v for k, v in split.items()}

    drain = keyed(shared.get("drain", {}))
    tuned = keyed(shared.get("drain_tuned", {}))
    peers = shared.get("peers", {})

    def row(what: str, goal: str, value: float | None, unit: str, ok: bool | None) -> None:
        shown = "-" if value is None else Figure("", "", value, unit).shown() + f" {unit}"
        rows.append((what, goal, shown, "-" if ok is None else ("yes" if ok else "**no**")))

    for batch in (10, 100):
        rate = drain.get(("postgres", 1, batch))
        row(f"PostgreSQL drain, 1 worker, batch {batch}", ">= 3,000 tasks/s", rate, "tasks/s",
            None if rate is None else rate >= 3000)
        peer = peers.get(f"pgqueuer batch {batch}")
        ratio = rate / peer if rate and peer else None
        row(f"ratio to pgqueuer at batch {batch}", ">= 1.0", ratio, "x", None if ratio is None else ratio >= 1)
        fast = tuned.get(("postgres", 1, batch))
        row(f"PostgreSQL drain, 1 worker, batch {batch}, tuned (prefetch {batch}, 8 threads)",
            ">= 3,000 tasks/s", fast, "tasks/s", None if fast is None else fast >= 3000)
        fast_ratio = fast / peer if fast and peer else None
        row(f"tuned ratio to pgqueuer at batch {batch}", ">= 1.0", fast_ratio, "x",
            None if fast_ratio is None else fast_ratio >= 1)
    sqlite = drain.get(("sqlite", 1, 10))
    row("SQLite drain, 1 worker, batch 10", ">= 500 tasks/s", sqlite, "tasks/s",
        None if sqlite is None else sqlite >= 500)
    busy = next((f for f in figures if f.benchmark == "drain" and f.name.startswith("sqlite + concurrent")),
                None)
    busy_value = busy.value if busy else None
    row("SQLite drain while submits and reads go on (no 'database is locked')", ">= 500 tasks/s",
        busy_value, "tasks/s", None if busy_value is None else busy_value >= 500)
    pickup = shared.get("pickup", {}).get("postgres")
    row("pickup latency p50 (PostgreSQL)", "<= 20 ms", pickup[0] if pickup else None, "ms",
        None if not pickup else pickup[0] <= 20)
    row("pickup latency p99 (PostgreSQL)", "<= 100 ms", pickup[1] if pickup else None, "ms",
        None if not pickup else pickup[1] <= 100)
    single = shared.get("submit_single")
    row("POST /api/tasks through gunicorn", ">= 1,000 requests/s", single, "requests/s",
        None if single is None else single >= 1000)
    bulk = _find(figures, "submit", "POST /api/tasks/batch (1,000 a call)")
    bulk_value = bulk.value if bulk else None
    row("bulk submit (POST /api/tasks/batch)", ">= 20,000 tasks/s", bulk_value, "tasks/s",
        None if bulk_value is None else bulk_value >= 20000)
    worst = shared.get("console_worst_p95")
    row("console, slowest page p95", "<= 100 ms", worst, "ms", None if worst is None else worst <= 100)
    ratio = shared.get("claim_ratio")
    row("claim rate with 1M finished rows / empty", ">= 0.8", ratio, "x", None if ratio is None else ratio >= 0.8)
    growth = shared.get("rss_growth")
    row("worker RSS growth", "<= 10 %", growth, "%", None if growth is None else abs(growth) <= 10)
    return rows


def write_report(ctx: Context, statuses: dict[str, str], durations: dict[str, float],
                 started: datetime) -> Path:
    """Save this run's figures to docs/benchmarks.json and render docs/benchmarks.md from it."""
    shared = _shared_for_json(ctx.shared)
    data = {
        "started": started.isoformat(), "revision": _git_revision(), "machine": machine(),
        "statuses": statuses, "durations": durations, "shared": shared,
        "figures": [asdict(figure) for figure in ctx.figures],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    return render(data)


def _shared_for_json(shared: dict[str, Any]) -> dict[str, Any]:
    out = {key: value for key, value in shared.items() if key not in ("drain", "drain_tuned")}
    for key in ("drain", "drain_tuned"):
        if key in shared:
            out[key] = {"|".join(map(str, k)): rate for k, rate in shared[key].items()}
    return out


def merge_report(ctx: Context, statuses: dict[str, str], durations: dict[str, float]) -> Path:
    """Replace some benchmarks' figures in docs/benchmarks.json with this run's; re-render.

    For re-running a benchmark that failed in the full run (noted in the report with the time).
    """
    if not RESULTS.is_file():
        raise SystemExit(f"--merge needs a full run's results in {RESULTS}")
    data = json.loads(RESULTS.read_text())
    rerun = set(statuses)
    data["figures"] = ([f for f in data["figures"] if f["benchmark"] not in rerun]
                       + [asdict(f) for f in ctx.figures])
    order = {f["benchmark"]: i for i, f in enumerate(data["figures"])}
    from .run import BENCHMARKS

    rank = {name: i for i, name in enumerate(BENCHMARKS)}
    data["figures"].sort(key=lambda f: (rank.get(f["benchmark"], 99), order.get(f["benchmark"], 0)))
    stamp = datetime.now(UTC).strftime("%H:%M UTC")
    for name, status in statuses.items():
        data["statuses"][name] = f"{status} (re-run alone at {stamp}, after the full run)"
        data["durations"][name] = durations[name]
    for key, value in _shared_for_json(ctx.shared).items():
        if isinstance(value, dict):
            data["shared"].setdefault(key, {}).update(value)
        else:
            data["shared"][key] = value
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    return render(data)


def render(data: dict[str, Any]) -> Path:
    """Write docs/benchmarks.md from saved results (and bench/findings.md, if present)."""
    from .run import BENCHMARKS

    figures_all = [Figure(**f) for f in data["figures"]]
    statuses: dict[str, str] = data["statuses"]
    durations: dict[str, float] = data["durations"]
    started = datetime.fromisoformat(data["started"])
    lines = ["# Benchmarks", "",
             "Written by `make bench` (`python -m bench.run`; `python -m bench.report` re-renders it "
             "from docs/benchmarks.json); do not edit by hand.", "",
             f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')} (run took "
             f"{sum(durations.values()) / 60:.1f} min)",
             f"- code: commit {data['revision']}", "",
             "## Machine", "", "| what | value |", "| --- | --- |"]
    lines += [f"| {what} | {value} |" for what, value in data["machine"]]
    lines += ["", "**Noise.** This is a shared 2-core virtual machine; other work (test suites of "
              "other developers) ran at the same time, so absolute numbers move by tens of percent "
              "from run to run. Compare figures from the same run (the ratios below are), not "
              "across runs.", "",
              "**Sizes.** As the performance issue asks, except: procrastinate drains 3,000 jobs "
              "instead of 10,000 (about 100 jobs/s here; its rate is steady after the first few "
              "hundred), and the memory benchmark drains for at most 4 minutes and says how many "
              "of its 200,000 tasks it ran, to keep a full run near 15-20 minutes.", ""]
    lines += ["## Targets of the performance issue", "", "| target | goal | measured | met |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targets(figures_all, data["shared"])]
    lines += [""]
    findings = ROOT / "bench" / "findings.md"
    if findings.is_file():  # hand-written: what the profiles of the last runs showed
        lines += [findings.read_text().strip(), ""]
    for name, module_name in BENCHMARKS.items():
        if name not in statuses:
            continue
        module: Any = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        title, _, body = doc.partition("\n")
        lines += [f"## {name}", "", title.strip(), ""]
        if body.strip():
            lines += [" ".join(body.split()), ""]
        status = statuses[name]
        if status != "ok":
            lines += [f"Status: {status}", ""]
        figures = [f for f in figures_all if f.benchmark == name]
        if figures:
            lines += ["| figure | value | unit | note |", "| --- | ---: | --- | --- |"]
            lines += [f"| {f.name} | {f.shown()} | {f.unit} | {f.note} |" for f in figures]
            lines += [""]
        lines += [f"({durations[name]:.0f} s)", ""]
    lines += REPRODUCE
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
    return REPORT


REPRODUCE = [
    "## How to reproduce", "",
    "```sh",
    "make bench          # full run (about 15-20 minutes), rewrites this file",
    "make bench-quick    # a small run of every benchmark (seconds each); make test runs it too",
    ".venv/bin/python -m bench.run --only drain peers   # some benchmarks; prints, writes nothing",
    ".venv/bin/python -m bench.run --only console --merge  # re-run one, replace its figures here",
    ".venv/bin/python -m bench.report                  # re-render this file from docs/benchmarks.json",
    "```", "",
    "Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and Redis on 127.0.0.1:6379 "
    "(`make services` starts both), `wrk` for the HTTP load (`apt-get install wrk`; without it a "
    "slower Python client is used) and PyPI access the first time, for the peers' throwaway "
    "virtualenvs under /tmp/bench-peers. Each benchmark creates and drops its own database "
    "(`bench_<name>_<run>`), uses its own Redis key prefix (RQ: Redis database 13) and temporary "
    "SQLite files. Settings: `BENCH_PG_ADMIN_URL`, `BENCH_REDIS_URL`, `BENCH_PEER_VENVS`, "
    "`BENCH_RQ_REDIS_DB`, `BENCH_LOG_LEVEL` (workers' log level, default INFO as shipped), "
    "`BENCH_NO_WRK=1` (use the Python HTTP client even when wrk is there). Stop a run with "
    "SIGTERM or Ctrl-C: it stops its workers and drops its databases.", "",
    "To see where a worker spends its time: `pip install py-spy`, then "
    "`py-spy record -o profile.svg --pid <worker pid>` (or `py-spy dump --pid <pid>`) while "
    "`python -m bench.run --only drain` runs; the worker's pid is in `ps`.",
]



def main() -> None:
    """``python -m bench.report``: re-render docs/benchmarks.md from docs/benchmarks.json."""
    if not RESULTS.is_file():
        raise SystemExit(f"no saved results at {RESULTS}; run python -m bench.run first")
    print(f"wrote {render(json.loads(RESULTS.read_text()))}")


if __name__ == "__main__":
    main()

__all__ = ["write_report", "render", "machine", "targets", "UTC"]
