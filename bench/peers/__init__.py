"""Peers: the same no-op drain with pgqueuer, procrastinate and RQ, each in a throwaway venv.

Only our scripts live here (``*_drain.py``); they drive the peer libraries, which pip installs
into virtualenvs under /tmp (``BENCH_PEER_VENVS``, default /tmp/bench-peers), never into the
project's. Each PostgreSQL peer gets a database of its own on the same server; RQ uses its own
Redis database number. Ratios ours/peer use our drain figures from the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..common import RUN_ID, Context, Skipped, pg_database, redis_available
from ..drain import HEADLINE_REPEATS

NAME = "peers"
HERE = Path(__file__).resolve().parent
VENV_ROOT = Path(os.environ.get("BENCH_PEER_VENVS", "/tmp/bench-peers"))
# The versions the performance issue quotes, so figures compare like with like.
# name -> (pip requirements, distribution, pinned version)
PEERS = {
    "pgqueuer": (["pgqueuer==1.6.0", "asyncpg"], "pgqueuer", "1.6.0"),
    "procrastinate": (["procrastinate==3.10.0"], "procrastinate", "3.10.0"),
    "rq": (["rq==3.0.0"], "rq", "3.0.0"),
}
RQ_REDIS_DB = int(os.environ.get("BENCH_RQ_REDIS_DB", "13"))
# procrastinate runs at about 100 jobs/s here; 3,000 jobs keep its two runs near a minute
# (its rate is steady after the first few hundred jobs).
PROCRASTINATE_JOBS = 3_000


def peer_python(name: str) -> Path:
    """The Python of the peer's venv, created and installed with pip if it is not there yet."""
    requirements, distribution, version = PEERS[name]
    venv = VENV_ROOT / name
    python = venv / "bin" / "python"
    names = [r.split("==")[0] for r in requirements]  # m.version raises if one is missing
    check = (f"import importlib.metadata as m, sys; [m.version(n) for n in {names!r}]; "
             f"sys.exit(m.version({distribution!r}) != {version!r})")
    if python.exists() and subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0:
        return python
    print(f"  installing {' '.join(requirements)} into {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(requirements)} failed:\n{done.stderr[-2000:]}")
    return python


def run_script(python: Path, script: str, args: list[str], timeout: float) -> dict:
    """Run one of our peer scripts; returns its JSON result."""
    done = subprocess.run([str(python), str(HERE / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(HERE))
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def run(ctx: Context) -> None:
    """Peer drain rates and the ratios of ours to each."""
    if ctx.quick:
        raise Skipped("peers are skipped in quick mode")
    jobs = 10_000
    ours = ctx.shared.get("drain", {})
    rates: dict[str, float] = ctx.shared.setdefault("peers", {})

    def record(label: str, result: dict, ours_key: tuple[str, int, int]) -> None:
        rate = float(result["rate"])
        rates[label] = rate
        note = f"{result['jobs']:,} no-op jobs, one process"
        if result.get("note"):
            note += f"; {result['note']}"
        ctx.add(NAME, f"{label} {result['version']}", rate, "jobs/s", note)
        mine = ours.get(ours_key)
        if mine:
            ctx.add(NAME, f"ratio ours ({ours_key[0]}, 1 worker, batch {ours_key[2]}) / {label}",
                    mine / rate, "x")

    python = peer_python("pgqueuer")
    for batch in (10, 100):
        tries = []
        for attempt in range(HEADLINE_REPEATS):  # best of N, like our headline drain runs
            with pg_database(f"peer_pgqueuer_{batch}_{attempt}", migrate_schema=False) as url:
                tries.append(run_script(python, "pgqueuer_drain.py",
                                        ["--dsn", _dsn(url), "--jobs", str(jobs), "--batch-size", str(batch)],
                                        600))
        best = max(tries, key=lambda r: float(r["rate"]))
        best["note"] = f"best of {len(tries)}: " + ", ".join(f"{float(r['rate']):,.0f}" for r in tries)
        record(f"pgqueuer batch {batch}", best, ("postgres", 1, batch))

    python = peer_python("procrastinate")
    for concurrency in (1, 8):
        with pg_database(f"peer_procrastinate_{concurrency}", migrate_schema=False) as url:
            result = run_script(python, "procrastinate_drain.py",
                                ["--dsn", _dsn(url), "--jobs", str(PROCRASTINATE_JOBS),
                                 "--concurrency", str(concurrency)],
                                600)
        record(f"procrastinate concurrency {concurrency}", result, ("postgres", 1, 10))

    if not redis_available():
        ctx.add(NAME, "rq SimpleWorker", None, "jobs/s", "skipped: Redis is not reachable")
        return
    python = peer_python("rq")
    redis_url = f"redis://127.0.0.1:6379/{RQ_REDIS_DB}"
    result = run_script(python, "rq_drain.py",
                        ["--redis-url", redis_url, "--queue", f"bench-{RUN_ID}", "--jobs", str(jobs)], 600)
    record("rq SimpleWorker", result, ("postgres", 1, 10))
