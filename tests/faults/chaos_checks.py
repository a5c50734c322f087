"""The invariants the chaos run (tests/faults/test_chaos.py) checks, read after the faults
stopped: from the database (tasks, events, notifications, committed processor rows), the
execution logs of the processors (tests/chaos_processors.py) and the mails the SMTP server got.
Each check returns the problems it found, as lines for the failure message.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from pathlib import Path

from flask import Flask
from sqlalchemy import select

from tests.chaos_processors import OUTCOMES
from tests.conftest import wait_until
from tests.faults.chaos import ApiLoad
from tests.faults.support import committed_runs, status_counts
from tests.proc_utils import ProcessPool, RunRecord, read_run_log, tail
from tests.smtp_server import ReceivedMail
from webapp.extensions import db
from webapp.tasks.models import AsyncTask, Notification, TaskEvent

TERMINAL = ("SUCCESS", "FAILURE", "CANCELLED")
# A mail sent just before its worker was killed: the kill came at most this long after the
# copy arrived (recording SENT takes milliseconds, seconds on a loaded machine).
SENT_NOT_RECORDED_WINDOW = 5.0
# The mail clock notes arrivals by polling from the test process, which a loaded machine can
# starve for a moment: an arrival may be noted up to this long after the kill that followed it.
MAIL_CLOCK_LAG = 2.0


# -- reading the outcome ------------------------------------------------------------------------


@dataclass
class Outcome:
    """Everything the checks read, after the run."""

    tasks: dict[int, AsyncTask]
    events: dict[int, list[TaskEvent]]
    notifications: dict[int, list[Notification]]  # task id -> its rows
    committed: collections.Counter[int]
    starts: list[RunRecord]


def read_outcome(app: Flask, run_dir: Path) -> Outcome:
    """Tasks, events, notifications and committed rows from the database; executions from the logs."""
    with app.app_context():
        try:
            tasks = {task.id: task for task in db.session.scalars(select(AsyncTask))}
            events: dict[int, list[TaskEvent]] = collections.defaultdict(list)
            for event in db.session.scalars(select(TaskEvent).order_by(TaskEvent.id)):
                events[event.task_id].append(event)
            notes: dict[int, list[Notification]] = collections.defaultdict(list)
            for note in db.session.scalars(select(Notification).order_by(Notification.id)):
                notes[note.task_id].append(note)
            db.session.expunge_all()
        finally:
            db.session.remove()
    starts = [record for path in sorted(run_dir.glob("runs-*.log")) for record in read_run_log(path)
              if record.event == "start"]
    return Outcome(tasks, dict(events), dict(notes), committed_runs(app), starts)


def last_to_end(outcome: Outcome) -> str:
    """The task that finished last and its timeline (seconds after its submit): why the drain took
    as long as it did."""
    if not outcome.tasks:
        return "no task"
    task = max(outcome.tasks.values(), key=lambda t: (t.finished_at is not None, t.finished_at or t.created_at))
    events = outcome.events.get(task.id, [])
    start = events[0].at if events else task.created_at
    return f"task {task.id}: " + ", ".join(f"{event.kind} {(event.at - start).total_seconds():.1f}s"
                                           + (f" ({event.message[:60]})" if event.message else "")
                                           for event in events)


def unfinished_count(app: Flask) -> int:
    """Tasks not yet in a terminal status."""
    return sum(n for status, n in status_counts(app).items() if status not in TERMINAL)


def describe_unfinished(app: Flask, logs: str, run_dir: Path, limit: int = 5) -> str:
    """The first unfinished tasks with their events, executions and log lines, for a failure."""
    with app.app_context():
        try:
            tasks = db.session.scalars(select(AsyncTask).where(AsyncTask.status.not_in(TERMINAL))
                                       .order_by(AsyncTask.id).limit(limit)).all()
            events = {task.id: db.session.scalars(select(TaskEvent).where(TaskEvent.task_id == task.id)
                                                  .order_by(TaskEvent.id)).all() for task in tasks}
        finally:
            db.session.remove()
    records = [record for path in sorted(run_dir.glob("runs-*.log")) for record in read_run_log(path)]
    lines = []
    for task in tasks:
        holder = re.search(r"-(\d+)-", task.worker_id or "")
        # Lines naming the task, and errors of its worker that name no task at all.
        mention = re.compile(rf"(task |task=|\[|, ){task.id}\b"
                             + (rf"|\[{holder.group(1)}\] .*(unexpected|failed)" if holder else ""))
        lines += [f"task {task.id} {task.status} attempts {task.attempts} worker {task.worker_id} "
                  f"updated {task.updated_at}",
                  f"  events {[(e.kind, e.attempt, e.worker_id, e.message) for e in events[task.id]]}",
                  f"  executions {[r for r in records if r.task_id == task.id]}",
                  *(f"  log: {line}" for line in logs.splitlines() if mention.search(line))][:40]
    return "\n".join(lines)


def wait_for_drain(app: Flask, pool: ProcessPool, run_dir: Path, seed: int, timeout: float) -> None:
    """Every task in a terminal status within ``timeout``; else fail describing the stuck ones."""
    try:
        wait_until(lambda: unfinished_count(app) == 0, timeout=timeout, interval=0.5,
                   message="every task in a terminal status")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (CHAOS_SEED={seed}); counts {status_counts(app)}:\n"
                             f"{describe_unfinished(app, pool.all_logs(), run_dir)}") from None


def pending_notifications(app: Flask) -> list[Notification]:
    """Notification rows still waiting to be sent (or being sent)."""
    with app.app_context():
        try:
            rows = db.session.scalars(select(Notification).where(Notification.status == "PENDING")
                                      .order_by(Notification.id)).all()
            db.session.expunge_all()
            return list(rows)
        finally:
            db.session.remove()


def wait_for_mails(app: Flask, pool: ProcessPool, seed: int, timeout: float) -> None:
    """No notification PENDING within ``timeout``; else fail describing the first ones left."""
    try:
        wait_until(lambda: not pending_notifications(app), timeout=timeout, interval=0.5,
                   message="every notification sent or given up")
    except AssertionError as exc:
        logs = pool.all_logs().splitlines()
        lines = []
        for note in pending_notifications(app)[:5]:
            mention = re.compile(rf"notification {note.id}\b|task {note.task_id}\b")
            lines += [f"notification {note.id} (task {note.task_id}) attempts {note.attempts}, next attempt "
                      f"{note.next_attempt_at}, claimed until {note.claimed_until}, last error {note.last_error}",
                      *(f"  log: {line}" for line in logs if mention.search(line))][:30]
        raise AssertionError(f"{exc} (CHAOS_SEED={seed}):\n" + "\n".join(lines)) from None


# -- the checks ---------------------------------------------------------------------------------


def check_acknowledged(outcome: Outcome, load: ApiLoad) -> list[str]:
    """Every acknowledged submit exists as sent; no key has two tasks; no task without a submit."""
    acks = load.acks
    problems = list(load.crashes)
    if not acks:
        problems.append(f"the API acknowledged none of {len(load.sent)} submits: the run tested nothing "
                        f"(answers: {dict(load.answers)})")
    by_key = collections.Counter(task.idempotency_key for task in outcome.tasks.values())
    problems += [f"key {key} has {n} tasks" for key, n in by_key.items() if n > 1]
    problems += [f"task {task.id} (key {task.idempotency_key}) was never submitted"
                 for task in outcome.tasks.values() if task.idempotency_key not in load.sent]
    for ack in acks.values():
        task = outcome.tasks.get(ack.task_id)
        if task is None:
            problems.append(f"acknowledged submit {ack.key} (task {ack.task_id}, {ack.status}) is missing")
        elif (task.idempotency_key, task.created_by, task.payload) != (ack.key, ack.creator, ack.payload):
            problems.append(f"task {task.id} is not what {ack.key} submitted: {task.idempotency_key}, "
                            f"{task.created_by}, {task.payload}")
    return problems


def check_ended(outcome: Outcome) -> list[str]:
    """Every task ended as its payload asked (or FAILURE for having been recovered too often)."""
    problems = []
    for task in outcome.tasks.values():
        wanted = OUTCOMES[task.payload["outcome"]]
        recovered_too_often = task.status == "FAILURE" and task.recovery_count > task.max_retry_count + 1
        if task.status != wanted and not recovered_too_often:
            problems.append(f"task {task.id} ({task.payload['outcome']}) ended {task.status}: {task.error}")
    return problems


def check_succeeded_once(outcome: Outcome) -> list[str]:
    """One terminal event per task; one committed processor row per SUCCESS task that writes one."""
    problems = []
    for task in outcome.tasks.values():
        kinds = [event.kind for event in outcome.events.get(task.id, [])]
        terminal = [kind for kind in kinds if kind in ("SUCCEEDED", "FAILED", "CANCELLED")]
        if len(terminal) != 1:
            problems.append(f"task {task.id} has terminal events {terminal}: {kinds}")
        rows = outcome.committed.get(task.id, 0)
        wanted = 1 if task.status == "SUCCESS" and task.payload["write_db"] else 0
        if rows != wanted:
            problems.append(f"task {task.id} ({task.status}, write_db={task.payload['write_db']}) "
                            f"committed {rows} processor rows")
    return problems


def crashes_of(events: list[TaskEvent]) -> int:
    """Attempts of the task that ended without an outcome: recovered or released, except
    claims given back because another attempt's Redis lock was still held (not attempts)."""
    return sum(1 for event in events
               if event.kind == "RECOVERED"
               or (event.kind == "RELEASED" and "lock" not in (event.message or "").lower()))


def check_attempts(outcome: Outcome) -> list[str]:
    """``attempts`` = executions + at most one per crash; no attempt executed twice."""
    problems = []
    executions = collections.Counter(record.task_id for record in outcome.starts)
    per_attempt = collections.Counter((record.task_id, record.attempt) for record in outcome.starts)
    problems += [f"task {task_id} attempt {attempt} executed {n} times"
                 for (task_id, attempt), n in per_attempt.items() if n > 1]
    for task in outcome.tasks.values():
        ran = executions.get(task.id, 0)
        crashes = crashes_of(outcome.events.get(task.id, []))
        if not ran <= task.attempts <= ran + crashes:
            kinds = [(event.kind, event.message) for event in outcome.events.get(task.id, [])]
            problems.append(f"task {task.id}: attempts {task.attempts}, executions {ran}, crashes "
                            f"{crashes}: {kinds}")
    return problems


@dataclass
class MailReport:
    """What the mail check found, for the summary."""

    mails: int
    duplicates: list[str]
    problems: list[str]


def check_mails(outcome: Outcome, mails: list[tuple[float, ReceivedMail]],
                faults: list[tuple[float, str, str]]) -> MailReport:
    """Each finished task's creator got one mail; a repeat only right after a worker kill."""
    problems, duplicates = [], []
    by_task: dict[int, list[tuple[float, ReceivedMail]]] = collections.defaultdict(list)
    for seen, mail in mails:
        by_task[int(mail.message["X-Taskdeck-Task-Id"] or 0)].append((seen, mail))
    problems += [f"{len(copies)} mail(s) for task {task_id}, which does not exist"
                 for task_id, copies in by_task.items() if task_id not in outcome.tasks]
    for task in outcome.tasks.values():
        copies = by_task.get(task.id, [])
        notes = outcome.notifications.get(task.id, [])
        if task.status not in ("SUCCESS", "FAILURE"):
            if copies or notes:
                problems.append(f"task {task.id} ended {task.status} yet has {len(notes)} notification(s)")
            continue
        if [(note.recipient, note.status) for note in notes] != [(task.created_by, "SENT")]:
            problems.append(f"task {task.id}: notifications {[(n.id, n.recipient, n.status) for n in notes]}")
            continue
        note = notes[0]
        wrong = [mail for _, mail in copies if mail.rcpt_tos != (task.created_by,)
                 or mail.message["X-Taskdeck-Notification-Id"] != str(note.id)]
        message_ids = {mail.message_id for _, mail in copies}
        if not copies or wrong or len(message_ids) != 1:
            problems.append(f"task {task.id}: {len(copies)} mail(s) for notification {note.id}, "
                            f"Message-IDs {sorted(message_ids)}, to {[m.rcpt_tos for m in wrong]}")
            continue
        if len(copies) > 1:
            seen = sorted(at for at, _ in copies)
            kills = [(at, int(pid)) for at, kind, pid in faults if kind == "kill -9"
                     and seen[0] - MAIL_CLOCK_LAG <= at <= seen[0] + SENT_NOT_RECORDED_WINDOW]
            if kills and note.attempts >= len(copies):
                duplicates.append(f"task {task.id}: {len(copies)} copies, Message-ID {message_ids.pop()}; "
                                  f"worker {kills[0][1]} killed at {kills[0][0] - seen[0]:+.2f}s from the "
                                  f"first copy's noted arrival, the repeat {seen[1] - seen[0]:.0f}s later")
            else:
                nearby = [f"{kind} {target} {at - seen[0]:+.1f}s" for at, kind, target in faults
                          if abs(at - seen[0]) <= 10]
                problems.append(f"task {task.id}: {len(copies)} copies of one mail ({seen[1] - seen[0]:.0f}s "
                                f"apart), notification attempts {note.attempts}, no worker killed within "
                                f"{SENT_NOT_RECORDED_WINDOW}s after the first copy; faults around it: {nearby}")
    return MailReport(len(mails), duplicates, problems)


def check_worker_deaths(deaths: list[tuple[str, int, int]], killed: set[int],
                        pool: ProcessPool) -> tuple[list[str], list[str]]:
    """Workers that exited without being killed: (problems, start-up casualties).

    A worker whose database connection was terminated while it registered, before its consumer
    ran, exits 1 and is restarted (as systemd would) having held nothing: reported, not failed.
    Any other exit of its own is a problem.
    """
    problems, casualties = [], []
    for name, pid, code in deaths:
        if pid in killed:
            continue
        text = pool.by_pid(pid).log_text()
        if not re.search(r"consumer \S+ started", text) and "OperationalError" in text:
            casualties.append(f"{name} (pid {pid})")
        else:
            problems.append(f"worker {name} (pid {pid}) exited with {code}:\n{tail(text, 15)}")
    return problems, casualties


def assert_none(problems: dict[str, list[str]], seed: int) -> None:
    """Fail naming every broken invariant (its first cases) and the seed that repeats the run."""
    broken = {what: found for what, found in problems.items() if found}
    assert not broken, f"chaos run broke invariants (repeat with CHAOS_SEED={seed}):\n" + "\n".join(
        f"{what}: {len(found)}\n  " + "\n  ".join(found[:15]) for what, found in broken.items())
