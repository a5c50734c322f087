"""PostgreSQL: every statement the engine writes by hand, and how it is run, in one module.

The hot statements are single round trips that carry their own events: the claim (SKIP
LOCKED, ordered walk of ``ix_async_task_due``), a batch of successes (fenced per attempt by
``unnest`` of ids and tokens), a bulk submit (one array a column) and a lone submit (task,
event and ``pg_notify`` in one autocommit statement). Times are the database's clock
(``statement_timestamp()``), so a worker whose own clock is wrong can neither claim delayed
tasks early nor recover live tasks. The dashboards' counting statements live here too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Integer,
    Interval,
    TextClause,
    cast,
    extract,
    func,
    literal,
    text,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from .dialect import Success, TaskWriter
from .direct import DirectConnection, pyformat
from .fencing import stored_result
from .limits import ClaimLimit
from .models import AsyncTask, TaskEventKind, UTCDateTime, utcnow

Query = TypeVar("Query")

WAKE_CHANNEL = "async_task_new_work"
CLOCK_OFFSET_TTL = 60.0  # seconds between measurements of the database clock's offset

# -- named statements ---------------------------------------------------------------------------

WAKE_SQL = text(f"NOTIFY {WAKE_CHANNEL}")
CLOCK_SQL = text("SELECT clock_timestamp()")
# See ``claim``: keeps the claim on the ordered index scan whatever the statistics say.
NO_SORT_SQL = text("SET LOCAL enable_sort = off")

# Stamping the chosen rows (the CTE ``due``) with the lease and writing their CLAIMED events:
# the common tail of ``CLAIM_SQL`` and ``CLAIM_LIMITED_SQL``.
CLAIM_STAMP_SQL = """claimed AS (
    UPDATE async_task AS t
    SET status = 'PROCESSING', claim_token = :token, worker_id = :worker,
        started_at = statement_timestamp(), updated_at = statement_timestamp(),
        attempts = t.attempts + 1, progress = NULL, progress_message = NULL
    FROM due WHERE t.id = due.id
    RETURNING t.id, t.task_type, t.payload, t.priority, t.retry_count, t.max_retry_count,
              t.created_by, t.created_at, t.attempts, t.claim_token, t.retry_strategy,
              t.retry_interval, t.retry_max_delay, t.retry_jitter, t.notify_url,
              t.workflow_id, t.workflow_key
), events AS (
    INSERT INTO task_event (task_id, at, kind, to_status, attempt, worker_id)
    SELECT id, statement_timestamp(), 'CLAIMED', 'PROCESSING', attempts, :worker FROM claimed
)"""
# The claim, one round trip: pick due rows in claim order skipping rows other consumers hold
# (SKIP LOCKED), stamp the lease on them, and write their CLAIMED events.
CLAIM_SQL = """
WITH due AS (
    SELECT id FROM async_task
    WHERE status IN ('PENDING', 'RETRYING') AND next_run_at <= statement_timestamp()
      AND task_type = ANY(CAST(:types AS varchar[]))
      AND (start_by IS NULL OR start_by > statement_timestamp())
    ORDER BY priority DESC, next_run_at, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
), """ + CLAIM_STAMP_SQL + """
SELECT * FROM claimed
"""
CLAIM_SQL_POSTGRES = text(CLAIM_SQL).columns(created_at=UTCDateTime())
CLAIM_SQL_DIRECT = pyformat(CLAIM_SQL)

# -- the claim of limited task types (flow control, see ``limits.py``) -----------------------
# Types with a concurrency or rate limit are claimed under a transaction-scoped advisory lock
# per type, taken (in name order, so two claimers never deadlock) only for types that have due
# work: claims of the same limited type queue up for a few milliseconds, everything else still
# takes CLAIM_SQL with no lock. The claim statement then runs on a snapshot taken after the
# lock, so it sees every claim committed before it and counts cannot go stale.
LIMITED_DUE_SQL = """
SELECT l.task_type FROM unnest(CAST(:types AS varchar[])) AS l(task_type)
WHERE EXISTS (SELECT 1 FROM async_task AS t WHERE t.task_type = l.task_type
              AND t.status IN ('PENDING', 'RETRYING') AND t.next_run_at <= statement_timestamp())
"""
# No ORDER BY above (the caller sorts): on the direct connection ``enable_sort = off`` prices a
# sort at 10^10, and PostgreSQL then JIT-compiled this look on every claim (a second each, so
# unlimited tasks beside a limited backlog drained at a few batches a second; bench/limits_drain.py).
LIMITED_DUE_SQL_DIRECT = pyformat(LIMITED_DUE_SQL)
# ``enable_sort = off`` (see ``claim``) prices the window functions' small sorts at 10^10, which
# would make PostgreSQL JIT-compile the statement on every claim (seconds): no JIT here.
NO_JIT_SQL = text("SET LOCAL jit = off")
UNIQUE_LOCK_SQL = text("SELECT pg_advisory_xact_lock(hashtext('taskdeck.unique'), hashtext(:key))")
# The limited claim's gate (an advisory lock per type, taken in name order) and the settings of
# its transaction, in one round trip: no sort and no JIT (see above) for the claim statement
# that follows, and, like the plain claim on the consumer's connection (``direct.py``), no wait
# for the WAL flush at commit (a claim lost in a crash is recovered like any other). Set here,
# they apply from the next statement on.
LIMIT_GATE_SETTINGS_SQL = text(
    "SELECT set_config('enable_sort', 'off', true), set_config('jit', 'off', true),"
    " set_config('synchronous_commit', :synchronous_commit, true),"
    " (SELECT count(*) FROM (SELECT pg_advisory_xact_lock(hashtext('taskdeck.limit'), hashtext(g.task_type))"
    "  FROM (SELECT unnest(CAST(:types AS varchar[])) AS task_type ORDER BY 1) AS g) AS locked)")

# One statement for the batch: the tasks a limit holds back are skipped, not claimed and handed
# back. ``running`` counts PROCESSING tasks per (type, key); ``recent`` counts starts in each
# rate window (``task_limit_start``); keys at their limit are filtered out while walking the
# due index (so a saturated key's backlog never fills the scan), and among the rest a task may
# start if the running (started) count plus its rank within its key stays within the limit.
# Ranks count every higher task of the key whether or not it is claimed: never too many.
CLAIM_LIMITED_SQL_TEXT = """
WITH lim AS (
    SELECT * FROM unnest(CAST(:l_types AS varchar[]), CAST(:l_concurrency AS integer[]),
                         CAST(:l_concurrency_key AS text[]), CAST(:l_rate_count AS integer[]),
                         CAST(:l_rate_per AS float8[]), CAST(:l_rate_key AS text[]))
        AS l(task_type, concurrency, concurrency_key, rate_count, rate_per, rate_key)
), running AS (
    SELECT t.task_type, left(COALESCE(t.payload ->> l.concurrency_key, ''), 200) AS ckey, count(*) AS n
    FROM lim AS l JOIN async_task AS t ON t.task_type = l.task_type AND t.status = 'PROCESSING'
    WHERE l.concurrency IS NOT NULL
    GROUP BY 1, 2
), recent AS (
    SELECT s.task_type, s.rate_key AS rkey, count(*) AS n
    FROM lim AS l JOIN task_limit_start AS s ON s.task_type = l.task_type
         AND s.started_at > statement_timestamp() - make_interval(secs => l.rate_per)
    WHERE l.rate_count IS NOT NULL
    GROUP BY 1, 2
), candidates AS (
    SELECT t.id, t.task_type, t.priority, t.next_run_at, k.ckey, k.rkey, l.concurrency, l.rate_count
    FROM async_task AS t
    LEFT JOIN lim AS l ON l.task_type = t.task_type
    CROSS JOIN LATERAL (SELECT
        left(COALESCE(t.payload ->> l.concurrency_key, ''), 200) AS ckey,
        left(COALESCE(t.payload ->> l.rate_key, ''), 200) AS rkey) AS k
    WHERE t.status IN ('PENDING', 'RETRYING') AND t.next_run_at <= statement_timestamp()
      AND t.task_type = ANY(CAST(:types AS varchar[]))
      AND (t.start_by IS NULL OR t.start_by > statement_timestamp())
      AND NOT EXISTS (SELECT 1 FROM running AS r
                      WHERE r.task_type = t.task_type AND r.ckey = k.ckey AND r.n >= l.concurrency)
      AND NOT EXISTS (SELECT 1 FROM recent AS w
                      WHERE w.task_type = t.task_type AND w.rkey = k.rkey AND w.n >= l.rate_count)
    ORDER BY t.priority DESC, t.next_run_at, t.id
    LIMIT :scan
), allowed AS (
    SELECT c.id, c.task_type, c.rkey, c.rate_count FROM (
        SELECT c.*,
               row_number() OVER (PARTITION BY c.task_type, c.ckey
                                  ORDER BY c.priority DESC, c.next_run_at, c.id) AS crank,
               row_number() OVER (PARTITION BY c.task_type, c.rkey
                                  ORDER BY c.priority DESC, c.next_run_at, c.id) AS rrank
        FROM candidates AS c) AS c
    LEFT JOIN running AS r ON r.task_type = c.task_type AND r.ckey = c.ckey
    LEFT JOIN recent AS w ON w.task_type = c.task_type AND w.rkey = c.rkey
    WHERE (c.concurrency IS NULL OR COALESCE(r.n, 0) + c.crank <= c.concurrency)
      AND (c.rate_count IS NULL OR COALESCE(w.n, 0) + c.rrank <= c.rate_count)
    ORDER BY c.priority DESC, c.next_run_at, c.id
    LIMIT :limit
), due AS (
    SELECT t.id FROM async_task AS t
    WHERE t.id IN (SELECT id FROM allowed) AND t.status IN ('PENDING', 'RETRYING')
    FOR UPDATE SKIP LOCKED
), """ + CLAIM_STAMP_SQL + """, starts AS (
    INSERT INTO task_limit_start (task_type, rate_key, started_at)
    SELECT a.task_type, a.rkey, statement_timestamp()
    FROM allowed AS a JOIN claimed AS c ON c.id = a.id WHERE a.rate_count IS NOT NULL
), pruned AS (
    DELETE FROM task_limit_start AS s USING lim AS l
    WHERE s.task_type = l.task_type AND l.rate_per IS NOT NULL
      AND s.started_at < statement_timestamp() - make_interval(secs => l.rate_per)
)
SELECT * FROM claimed
"""
CLAIM_LIMITED_SQL = text(CLAIM_LIMITED_SQL_TEXT).columns(created_at=UTCDateTime())
CLAIM_LIMITED_SQL_DIRECT = pyformat(CLAIM_LIMITED_SQL_TEXT)
# The gate on the consumer's own connection (``enable_sort = off`` there): no sort to plan,
# the locks taken in the order of the array (sorted by the caller), and no JIT for the claim
# that follows in the same transaction.
LIMIT_GATE_DIRECT_SQL = pyformat(
    "SELECT set_config('jit', 'off', true), (SELECT count(*) FROM (SELECT pg_advisory_xact_lock("
    "hashtext('taskdeck.limit'), hashtext(g.task_type)) FROM unnest(CAST(:gate_types AS varchar[])) AS g(task_type))"
    " AS locked)")

# Many successes in one round trip: fenced by each attempt's claim token, events included.
SUCCEED_SQL = """
WITH done AS (
    UPDATE async_task AS t
    SET status = 'SUCCESS', result = v.result, error = NULL, claim_token = NULL,
        finished_at = statement_timestamp(), updated_at = statement_timestamp()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS text[]), CAST(:results AS jsonb[]))
         AS v(id, token, result)
    WHERE t.id = v.id AND t.claim_token = v.token AND t.status = 'PROCESSING'
    RETURNING t.id, v.token, t.attempts, t.cancel_requested_at
), events AS (
    INSERT INTO task_event (task_id, at, kind, from_status, to_status, attempt, worker_id)
    SELECT id, statement_timestamp(), 'SUCCEEDED', 'PROCESSING', 'SUCCESS', attempts, :worker FROM done
)
SELECT id, token, cancel_requested_at FROM done
"""
SUCCEED_SQL_POSTGRES = text(SUCCEED_SQL)
SUCCEED_SQL_DIRECT = pyformat(SUCCEED_SQL)

# SUCCEED_SQL for a batch holding a workflow's tasks (docs/workflows.md): the same fenced
# success, then the workflows' success counts (which takes their rows' locks: an InitPlan of
# ``released`` reads ``counted``, so the workflow rows are always locked before any dependent,
# the order every workflow change keeps), then one off ``pending_parents`` of each WAITING
# child, which becomes PENDING (with its UNBLOCKED event) at 0. One round trip; the rare
# follow-up (a workflow ended or has failures: its status and callbacks) is ``settle_ids``.
SUCCEED_RESOLVING_SQL = text("""
WITH done AS (
    UPDATE async_task AS t
    SET status = 'SUCCESS', result = v.result, error = NULL, claim_token = NULL,
        finished_at = statement_timestamp(), updated_at = statement_timestamp()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS text[]), CAST(:results AS jsonb[]))
         AS v(id, token, result)
    WHERE t.id = v.id AND t.claim_token = v.token AND t.status = 'PROCESSING'
    RETURNING t.id, v.token, t.attempts, t.cancel_requested_at, t.workflow_id, t.workflow_key
), events AS (
    INSERT INTO task_event (task_id, at, kind, from_status, to_status, attempt, worker_id)
    SELECT id, statement_timestamp(), 'SUCCEEDED', 'PROCESSING', 'SUCCESS', attempts, :worker FROM done
), counted AS (
    UPDATE workflow AS w SET succeeded = w.succeeded + m.n, updated_at = statement_timestamp()
    FROM (SELECT workflow_id, count(*) AS n FROM done
          WHERE workflow_id IS NOT NULL AND left(workflow_key, 1) <> '@' GROUP BY workflow_id) AS m
    WHERE w.id = m.workflow_id
    RETURNING w.id, (w.succeeded + w.failed + w.cancelled >= w.task_count OR w.failed > 0
                     OR w.status <> 'RUNNING') AS to_settle
), released AS (
    UPDATE async_task AS c
    SET pending_parents = c.pending_parents - r.n,
        status = CASE WHEN c.pending_parents <= r.n THEN 'PENDING' ELSE c.status END,
        next_run_at = CASE WHEN c.pending_parents <= r.n THEN statement_timestamp() ELSE c.next_run_at END,
        updated_at = statement_timestamp()
    FROM (SELECT e.child_id, count(*) AS n FROM workflow_edge AS e JOIN done AS d ON e.parent_id = d.id
          GROUP BY e.child_id) AS r
    WHERE c.id = r.child_id AND c.status = 'WAITING' AND (SELECT count(*) FROM counted) >= 0
    RETURNING c.id, c.status
), unblocked AS (
    INSERT INTO task_event (task_id, at, kind, from_status, to_status, message)
    SELECT id, statement_timestamp(), 'UNBLOCKED', 'WAITING', 'PENDING', 'every parent succeeded'
    FROM released WHERE status = 'PENDING'
)
SELECT 'task' AS kind, id, token, cancel_requested_at FROM done
UNION ALL SELECT 'settle', id, NULL, NULL FROM counted WHERE to_settle
UNION ALL SELECT 'released', id, NULL, NULL FROM released WHERE status = 'PENDING'
""")


@dataclass(frozen=True)
class ResolvedSuccesses:
    """What ``succeed_resolving`` did: attempts that won, those with a cancel request, the
    workflows to settle (ended or with failures) and whether dependents became due."""

    won: set[tuple[int, str]]
    too_late: set[tuple[int, str]]
    settle_ids: list[int]
    released: bool

# Bulk submit: one array a column instead of one parameter a cell, which keeps a 1,000-task
# insert a single short statement; SUBMITTED events are written by the same call. Payloads
# travel as one JSON array (one string to send, no per-element array quoting) and are picked
# by position; the other columns are one typed array each.
BULK_INSERT_COLUMNS = {
    "task_type": "varchar", "priority": "integer", "max_retry_count": "integer",
    "retry_strategy": "varchar", "retry_interval": "float8", "retry_max_delay": "float8",
    "retry_jitter": "float8", "created_by": "varchar", "next_run_at": "timestamptz",
    "notify_url": "varchar", "principal": "varchar", "idempotency_scope": "varchar",
    "idempotency_key": "varchar", "start_by": "timestamptz",
}
BULK_INSERT_SQL_POSTGRES = text(
    "WITH new AS ("
    " INSERT INTO async_task (task_type, status, priority, payload, retry_count, max_retry_count,"
    " retry_strategy, retry_interval, retry_max_delay, retry_jitter, created_by, created_at,"
    " updated_at, next_run_at, attempts, recovery_count, notify_url, principal, idempotency_scope,"
    " idempotency_key, start_by)"
    " SELECT v.task_type, 'PENDING', v.priority, CAST(:payloads AS jsonb) -> CAST(v.position - 1 AS integer),"
    " 0, v.max_retry_count, v.retry_strategy,"
    " v.retry_interval, v.retry_max_delay, v.retry_jitter, v.created_by, CAST(:now AS timestamptz),"
    " CAST(:now AS timestamptz), v.next_run_at, 0, 0, v.notify_url, v.principal, v.idempotency_scope,"
    " v.idempotency_key, v.start_by"
    " FROM unnest(" + ", ".join(f"CAST(:c_{name} AS {kind}[])" for name, kind in BULK_INSERT_COLUMNS.items())
    + ") WITH ORDINALITY AS v(" + ", ".join(BULK_INSERT_COLUMNS) + ", position)"
    " ORDER BY v.position"
    " RETURNING id, principal"
    "), events AS ("
    " INSERT INTO task_event (task_id, at, kind, to_status, actor)"
    " SELECT id, CAST(:now AS timestamptz), 'SUBMITTED', 'PENDING', principal FROM new"
    ") SELECT id FROM new"
)

_ONE_STATEMENT_SUBMIT_SQL: dict[tuple[str, ...], tuple[str, frozenset[str]]] = {}


def one_statement_submit_sql(columns: tuple[str, ...]) -> tuple[str, frozenset[str]]:
    """The task + SUBMITTED event + ``pg_notify`` statement for these columns (psycopg placeholders).

    Plain driver SQL, built once per column set: compiling a Core CTE per request cost more CPU
    than the round trip it saves. Also returns the JSON columns, which travel as JSON text.
    """
    cached = _ONE_STATEMENT_SUBMIT_SQL.get(columns)
    if cached is None:
        table = AsyncTask.__table__
        json_columns = frozenset(name for name in columns if table.c[name].type._type_affinity is JSON)
        values = ", ".join(f"CAST(%({name})s AS jsonb)" if name in json_columns else f"%({name})s"
                           for name in columns)
        sql = (
            f"WITH new_task AS (INSERT INTO async_task ({', '.join(columns)}) VALUES ({values})"
            " RETURNING id, status, created_at, principal),"
            " new_task_event AS (INSERT INTO task_event (task_id, at, kind, to_status, actor)"
            " SELECT id, created_at, %(event_kind)s, status, principal FROM new_task)"
            f" SELECT id, pg_notify('{WAKE_CHANNEL}', '') FROM new_task"
        )
        cached = _ONE_STATEMENT_SUBMIT_SQL[columns] = (sql, json_columns)
    return cached


# Dashboards: each group's count, exact up to a limit (one index range read per group that
# stops at the limit; indexes on (status, id) and (task_type, status, id) serve it).
def exact_counts_sql(table: str, columns: Sequence[str]) -> TextClause:
    """Per group of ``columns`` (given as arrays ``:g0``, ``:g1``, …): rows, counted up to ``:limit``."""
    arrays = ", ".join(f"CAST(:g{i} AS text[])" for i in range(len(columns)))
    names = ", ".join(f"g{i}" for i in range(len(columns)))
    match = " AND ".join(f"t.{column} = g.g{i}" for i, column in enumerate(columns))
    return text(
        f"SELECT {names}, (SELECT count(*) FROM (SELECT 1 FROM {table} AS t WHERE {match} "
        f"LIMIT :limit) AS capped) FROM unnest({arrays}) AS g({names})")


def sampled_counts_sql(table: str, columns: Sequence[str]) -> TextClause:
    """Rows per group seen in a fixed sample of ``:pages`` pages, with the table's size figures."""
    names = ", ".join(columns)
    percent = ("LEAST(100, :pages * 100.0 / GREATEST(1, pg_relation_size(:table)"
               " / current_setting('block_size')::int))")
    return text(
        f"WITH counted AS (SELECT {names}, count(*) AS seen FROM {table}"
        f"   TABLESAMPLE SYSTEM ({percent}) REPEATABLE (:seed) GROUP BY {names}),"
        f" size AS (SELECT c.reltuples, c.relpages, {percent} AS percent,"
        f"   pg_relation_size(:table) / current_setting('block_size')::int AS pages_now"
        f"   FROM pg_class AS c WHERE c.oid = CAST(:table AS regclass))"
        f" SELECT counted.*, size.reltuples, size.relpages, size.percent, size.pages_now"
        f" FROM counted CROSS JOIN size")


# Every task type with rows: one index probe per type (a loose index scan).
TASK_TYPES_PRESENT_SQL = text(
    "WITH RECURSIVE types(task_type) AS ("
    " (SELECT task_type FROM async_task ORDER BY task_type LIMIT 1)"
    " UNION ALL"
    " SELECT (SELECT a.task_type FROM async_task AS a WHERE a.task_type > types.task_type"
    "         ORDER BY a.task_type LIMIT 1) FROM types WHERE types.task_type IS NOT NULL)"
    " SELECT task_type FROM types WHERE task_type IS NOT NULL")


# -- the dialect ------------------------------------------------------------------------------


class PostgresDialect:
    """PostgreSQL's half of the engine's writes (see ``dialect.Dialect``)."""

    name = "postgresql"
    submits_in_one_statement = True
    samples_counts = True

    def now(self) -> ColumnElement[datetime]:
        """The database clock: ``statement_timestamp()``."""
        return func.statement_timestamp(type_=UTCDateTime())

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        """``statement_timestamp() + seconds``."""
        shifted = func.statement_timestamp() + literal(timedelta(seconds=seconds), Interval())
        return type_coerce(shifted, UTCDateTime())

    def begin_write(self, session: Session) -> None:
        """Nothing: PostgreSQL never refuses a transaction's first write for having read before."""

    def db_now(self, session: Session, engine_state: Callable[[], Any]) -> datetime:
        """Python's clock corrected by the database clock's offset, measured once a minute.

        Times written from Python (submit and event times) must agree with the times the
        database compares them with; a submitter whose clock runs ten minutes fast would
        otherwise delay its own tasks by ten minutes.
        """
        engine = engine_state()
        measured = time.monotonic()
        offset = engine.clock_offset
        if offset is None or measured - offset[0] > CLOCK_OFFSET_TTL:
            with session.get_bind().engine.connect() as connection:
                before = utcnow()
                server = connection.execute(CLOCK_SQL).scalar_one()
                after = utcnow()
            offset = engine.clock_offset = (measured, server - (before + (after - before) / 2))
        return utcnow() + offset[1]

    def skip_locked(self, query: Query, **options: Any) -> Query:
        """A row locked by a frozen (or finishing) transaction is passed over, not waited for."""
        return query.with_for_update(skip_locked=True, **options)  # type: ignore[attr-defined,no-any-return]

    def whole_minutes_since(self, column: Any, start: datetime) -> ColumnElement[int]:
        """``floor((column - start) / 1 minute)``, computed in the database."""
        seconds = extract("epoch", column - literal(start, UTCDateTime()))
        return cast(func.floor(seconds / 60), Integer)

    def wake_consumers(self, session: Session) -> None:
        """``NOTIFY``: delivered to every listening consumer at commit, one per commit."""
        session.execute(WAKE_SQL)

    def submit_in_one_statement(self, connection: Connection, row: dict[str, Any]) -> int:
        """Task, SUBMITTED event and ``pg_notify`` as one statement on an autocommit connection."""
        sql, json_columns = one_statement_submit_sql(tuple(row))
        params = {name: json.dumps(value) if name in json_columns else value for name, value in row.items()}
        params["event_kind"] = TaskEventKind.SUBMITTED.value
        return int(connection.exec_driver_sql(sql, params).scalar_one())

    def insert_tasks(self, writer: TaskWriter, rows: list[dict[str, Any]]) -> list[int]:
        """Column-wise insert with events; ids come from the sequence in input order."""
        params: dict[str, Any] = {f"c_{name}": [row[name] for row in rows] for name in BULK_INSERT_COLUMNS}
        params["payloads"] = json.dumps([row["payload"] for row in rows])
        params["now"] = rows[0]["created_at"]
        ids = writer.session.execute(BULK_INSERT_SQL_POSTGRES, params).scalars().all()
        return sorted(ids)

    def claim(self, writer: TaskWriter, worker_id: str, limit: int, types: list[str], token: str,
              direct: DirectConnection | None) -> Sequence[Any]:
        """``CLAIM_SQL``; on the consumer's own autocommit connection when it has one.

        The claim must walk ix_async_task_due in order and stop after ``limit`` rows. Right
        after a burst of submits, before autovacuum has analysed the table, the planner
        believes the table is tiny and sorts every due row instead (tens of ms, spilling to
        disk, for each claim); forbidding the sort for this one transaction keeps the ordered
        index scan whatever the statistics say (a direct connection is set up that way).
        """
        params = {"types": types, "limit": limit, "token": token, "worker": worker_id}
        if direct is not None:  # one round trip
            return [row._replace(created_at=row.created_at.astimezone(UTC))
                    for row in direct.execute(CLAIM_SQL_DIRECT, params)]
        writer.session.execute(NO_SORT_SQL)
        return writer.session.execute(CLAIM_SQL_POSTGRES, params).all()

    def lock_unique(self, session: Session, key: str) -> None:
        """A transaction-scoped advisory lock on the key: concurrent identical submits queue up."""
        session.execute(UNIQUE_LOCK_SQL, {"key": key})

    def payload_field_equals(self, field: str, value: Any) -> ColumnElement[bool]:
        """``COALESCE(payload -> field, 'null') = CAST(value AS jsonb)``: JSON equality, absent = null."""
        stored = func.coalesce(AsyncTask.payload.op("->")(literal(field)), cast(literal("null"), JSONB))
        return stored == cast(literal(json.dumps(value)), JSONB)

    def claim_limited(self, writer: TaskWriter, worker_id: str, limit: int, types: list[str],
                      limited: Sequence[ClaimLimit], token: str, direct: DirectConnection | None
                      ) -> Sequence[Any]:
        """A claim where some of ``types`` have limits: ``CLAIM_LIMITED_SQL`` under their locks.

        Limited types with nothing due are left out (one cheap look, on the direct connection
        when there is one); if none has due work, the others take the plain ``claim``.
        """
        by_type = {item.task_type: item for item in limited}
        free = [t for t in types if t not in by_type]
        look = {"types": sorted(by_type)}
        due_types = sorted([row.task_type for row in direct.execute(LIMITED_DUE_SQL_DIRECT, look)]
                           if direct is not None else writer.session.execute(text(LIMITED_DUE_SQL), look).scalars())
        if not due_types:
            writer.session.rollback()
            return self.claim(writer, worker_id, limit, free, token, direct) if free else []
        gated = [by_type[t] for t in due_types]
        params: dict[str, Any] = {
            "types": free + due_types, "limit": limit, "scan": max(200, 20 * limit), "token": token,
            "worker": worker_id, "l_types": [g.task_type for g in gated],
            "l_concurrency": [g.concurrency for g in gated],
            "l_concurrency_key": [g.concurrency_key for g in gated],
            "l_rate_count": [g.rate_count for g in gated], "l_rate_per": [g.rate_per for g in gated],
            "l_rate_key": [g.rate_key for g in gated]}
        if direct is not None:  # gate and claim in one round trip, like the plain claim's one statement
            rows = direct.execute_after(LIMIT_GATE_DIRECT_SQL, CLAIM_LIMITED_SQL_DIRECT,
                                        {**params, "gate_types": due_types})
            return [row._replace(created_at=row.created_at.astimezone(UTC)) for row in rows]
        session = writer.session
        session.execute(LIMIT_GATE_SETTINGS_SQL, {"types": due_types, "synchronous_commit": "on"}).all()
        return session.execute(CLAIM_LIMITED_SQL, params).all()

    resolves_in_succeed = True

    def succeed_resolving(self, writer: TaskWriter, successes: Sequence[Success], worker_id: str | None
                          ) -> ResolvedSuccesses:
        """``SUCCEED_RESOLVING_SQL`` in the caller's transaction."""
        rows = writer.session.execute(SUCCEED_RESOLVING_SQL, succeed_params(successes, worker_id)).all()
        tasks = [row for row in rows if row.kind == "task"]
        return ResolvedSuccesses({(row.id, row.token) for row in tasks},
                                 {(row.id, row.token) for row in tasks if row.cancel_requested_at is not None},
                                 sorted(row.id for row in rows if row.kind == "settle"),
                                 any(row.kind == "released" for row in rows))

    def succeed(self, writer: TaskWriter, successes: Sequence[Success], worker_id: str | None
                ) -> tuple[set[tuple[int, str]], set[tuple[int, str]]]:
        """``SUCCEED_SQL`` in the caller's transaction."""
        rows = writer.session.execute(SUCCEED_SQL_POSTGRES, succeed_params(successes, worker_id)).all()
        return ({(row.id, row.token) for row in rows},
                {(row.id, row.token) for row in rows if row.cancel_requested_at is not None})


def succeed_params(successes: Sequence[Success], worker_id: str | None) -> dict[str, Any]:
    """The arrays ``SUCCEED_SQL`` takes."""
    return {"ids": [f.task.id for f in successes], "tokens": [f.task.claim_token for f in successes],
            "results": [json.dumps(stored_result(f.result.data)) for f in successes], "worker": worker_id}


def succeed_directly(direct: DirectConnection, successes: Sequence[Success], worker_id: str | None
                     ) -> list[Any]:
    """``SUCCEED_SQL`` as one autocommit statement on a consumer's own connection."""
    return direct.execute(SUCCEED_SQL_DIRECT, succeed_params(successes, worker_id))


POSTGRES = PostgresDialect()
