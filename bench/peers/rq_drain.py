"""Drain benchmark for RQ with SimpleWorker (run with the Python of a throwaway venv with rq).

Queues N no-op jobs on its own queue in its own Redis database, then one SimpleWorker in burst
mode runs them all in this process. Prints one JSON line: jobs, seconds from the first job's
start until the burst worker returned (queue empty, last job finished), and jobs/s. Removes
the keys it made.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.metadata import version

import redis
import rq_jobs
from rq import Queue, SimpleWorker

ENQUEUE_CHUNK = 1000


def drain(url: str, queue_name: str, jobs: int) -> dict:
    """Queue ``jobs`` no-op jobs, run them with a burst SimpleWorker, return the timing."""
    connection = redis.Redis.from_url(url)
    queue = Queue(queue_name, connection=connection)
    try:
        for start in range(0, jobs, ENQUEUE_CHUNK):
            size = min(ENQUEUE_CHUNK, jobs - start)
            with connection.pipeline() as pipe:
                queue.enqueue_many([Queue.prepare_data(rq_jobs.noop, result_ttl=0) for _ in range(size)],
                                   pipeline=pipe)
                pipe.execute()
        worker = SimpleWorker([queue], connection=connection)
        worker.work(burst=True, logging_level="WARNING")
        end = time.time()
    finally:
        # This Redis database is the benchmark's own: everything RQ left in it goes.
        for key in connection.scan_iter(match="rq:*", count=1000):
            connection.delete(key)
    seconds = end - rq_jobs.STATE["first"]
    return {"jobs": rq_jobs.STATE["count"], "seconds": seconds, "rate": rq_jobs.STATE["count"] / seconds,
            "version": version("rq")}


def main() -> None:
    """Command line: --redis-url (its own database number), --queue, --jobs."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(drain(args.redis_url, args.queue, args.jobs)))


if __name__ == "__main__":
    main()
