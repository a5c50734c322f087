"""Gunicorn settings: ``gunicorn wsgi:app`` reads this file from the working directory.

Every value can be changed from the environment (systemd ``EnvironmentFile``, a Procfile
shell), so one committed file serves every machine. See docs/deploy.md.

| variable | default | meaning |
| --- | --- | --- |
| ``GUNICORN_BIND`` | ``$HOST:$PORT`` (``127.0.0.1:8000``) | where to listen; nginx in front (docs/nginx/) |
| ``WEB_CONCURRENCY`` | ``2 x CPUs + 1``, at most 8 | worker processes |
| ``GUNICORN_THREADS`` | ``4`` | request threads per worker (gthread) |
| ``GUNICORN_TIMEOUT`` | ``30`` | seconds a silent worker lives before the master restarts it |
| ``GUNICORN_PRELOAD`` | ``false`` | import the app once in the master (copy-on-write memory) |
| ``ASYNC_TASK_SHUTDOWN_GRACE`` | ``30`` | graceful_timeout = this + 15 s |
| ``ASYNC_TASK_LOG_FORMAT`` | ``text`` | ``json``: gunicorn's own lines in JSON too |
| ``GUNICORN_CONTROL_SOCKET`` | ``false`` | ``true``: enable gunicorn's control socket |
"""

import os

from webapp.gunicorn_hooks import mark_gunicorn_master, post_worker_init, worker_exit, worker_int
from webapp.logging_setup import gunicorn_logconfig

# Before the app is imported anywhere: lets wsgi.py tell the master (preload) from a worker.
mark_gunicorn_master()


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may use (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def _flag(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


# Loopback by default: gunicorn's threads read requests themselves, so slow clients can hold them
# all; the documented layout puts nginx in front (docs/nginx/taskdeck.conf, docs/deploy.md).
bind = os.environ.get("GUNICORN_BIND") or f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
# Each worker holds its own database pool (and, if enabled, a consumer): past 8 the database's
# connection limit binds before the CPUs do; raise WEB_CONCURRENCY deliberately (docs/deploy.md).
workers = int(os.environ.get("WEB_CONCURRENCY") or min(2 * _cpu_count() + 1, 8))
worker_class = "gthread"  # htmx polling keeps connections busy; threads answer them cheaply
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# SIGTERM: requests finish, then the worker's consumer gets the shutdown grace for running
# tasks and releases the rest; the master waits this long before it kills a worker.
graceful_timeout = int(float(os.environ.get("ASYNC_TASK_SHUTDOWN_GRACE", "30")) + 15)
keepalive = 5
preload_app = _flag("GUNICORN_PRELOAD", False)
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'
logconfig_dict = gunicorn_logconfig(os.environ.get("ASYNC_TASK_LOG_FORMAT", "text").strip().lower())
proc_name = "taskdeck-web"
# Newer gunicorn opens a control socket at one path per user: two instances would fight over it.
control_socket_disable = not _flag("GUNICORN_CONTROL_SOCKET", False)

# The embedded consumer (ASYNC_TASK_CONSUMER_ENABLED=true) lives in the workers, never the master.
__all__ = ["post_worker_init", "worker_exit", "worker_int"]
