"""Running the embedded consumer safely under gunicorn's fork model.

Threads do not survive ``fork()``: a consumer started in gunicorn's master would leave every
worker with a dead copy of it (and the master running tasks). Where ``wsgi.py`` is imported
decides where the consumer would start:

* default (``preload_app = False``): each worker imports ``wsgi.py`` itself, after the fork,
  and starts its own consumer there; nothing runs in the master;
* ``preload_app = True``: the master imports ``wsgi.py`` once before forking. ``gunicorn.conf.py``
  has marked the master (``mark_gunicorn_master``), so ``start_consumer_when_safe`` only notes
  that a consumer is wanted, and ``post_worker_init`` starts one in each worker after the
  fork, once the pool of database connections inherited from the master has been dropped.

``worker_exit`` stops the worker's consumer: it claims nothing more, lets running tasks finish
within the shutdown grace (bounded by gunicorn's ``graceful_timeout``) and releases the rest
for other workers, so a restart or a scale-down loses no task. After ``SIGINT``/``SIGQUIT``
(gunicorn's quick shutdown) running tasks are released at once.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask

from .extensions import db
from .tasks.engine import start_embedded_consumer

log = logging.getLogger(__name__)

MASTER_PID_ENV = "TASKDECK_GUNICORN_MASTER_PID"
DEFERRED_KEY = "taskdeck_consumer_deferred"
# Seconds kept back from gunicorn's graceful_timeout for the release and the worker's exit.
EXIT_MARGIN = 5.0


def mark_gunicorn_master() -> None:
    """Called by gunicorn.conf.py as gunicorn loads it, in the master, before any app import."""
    os.environ[MASTER_PID_ENV] = str(os.getpid())


def in_gunicorn_master() -> bool:
    """True in gunicorn's master process (importing the app for ``preload_app``)."""
    return os.environ.get(MASTER_PID_ENV) == str(os.getpid())


def start_consumer_when_safe(app: Flask) -> Any:
    """Start the embedded consumer now, or, in gunicorn's master, in each worker after the fork."""
    if in_gunicorn_master():
        app.extensions[DEFERRED_KEY] = True
        log.info("gunicorn master: the embedded consumer starts in each worker after the fork")
        return None
    return start_embedded_consumer(app)


def _flask_app(worker: Any) -> Flask | None:
    app = getattr(worker, "wsgi", None)
    return app if isinstance(app, Flask) else None


def post_worker_init(worker: Any) -> None:
    """Gunicorn hook, in the worker once the app is loaded: start a deferred consumer."""
    app = _flask_app(worker)
    if app is None:
        return
    if worker.cfg.preload_app:
        # Connections opened in the master are shared with every sibling after the fork;
        # forget them here (without closing the master's sockets) and open fresh ones.
        with app.app_context():
            db.engine.dispose(close=False)
    if app.extensions.pop(DEFERRED_KEY, False):
        start_embedded_consumer(app)


def worker_int(worker: Any) -> None:
    """Gunicorn hook on SIGINT/SIGQUIT (quick shutdown): release running tasks at once."""
    worker.taskdeck_quick_exit = True


def worker_exit(server: Any, worker: Any) -> None:
    """Gunicorn hook as a worker exits: stop its consumer gracefully (release what is left)."""
    if getattr(worker, "pid", None) != os.getpid():
        return  # the master reporting a worker that is already gone: nothing of ours runs here
    app = _flask_app(worker)
    if app is None or "async_task" not in app.extensions:
        return
    consumers = list(app.extensions["async_task"].local_consumers)
    if not consumers:
        return
    grace = 0.0 if getattr(worker, "taskdeck_quick_exit", False) else max(
        0.0, min(float(app.config["ASYNC_TASK_SHUTDOWN_GRACE"]),
                 float(worker.cfg.graceful_timeout) - EXIT_MARGIN))
    for consumer in consumers:
        released = consumer.stop(grace=grace)
        log.info("worker %s: consumer %s stopped, %d task(s) released", os.getpid(),
                 consumer.worker_id, len(released))
