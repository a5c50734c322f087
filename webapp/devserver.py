"""``make run`` in one process: schema, first login, example tasks, consumer, development server.

``python -m webapp.devserver --host 127.0.0.1 --port 5000`` does what ``flask db upgrade``,
``flask users ensure-demo``, ``python -m webapp.examples seed`` and ``flask --app wsgi:app run``
did one after the other, but imports and builds the app once (each of those processes paid the
whole start-up again: 8-14 s for a second ``make run``). A second start costs one query per step:

* the schema: ``alembic_version`` against the migrations' heads; alembic is imported and the
  upgrade run only when the database is behind (a new one, or new migrations pulled);
* the first login: an admin with a random password, created and printed only when no user exists;
* the example tasks: queued only when the table has no task at all (a first run).

Then the embedded consumer starts (as ``wsgi.py`` starts it) and werkzeug serves, threaded and
without reloader or debugger, as ``flask run --no-reload`` did.
"""

from __future__ import annotations

import argparse
import sys

from werkzeug.serving import run_simple

from . import create_app
from .console.cli import ensure_demo_user
from .examples import seed_examples
from .gunicorn_hooks import start_consumer_when_safe
from .schema import upgrade_schema
from .tasks.service import AsyncTaskService


def main(argv: list[str] | None = None) -> int:
    """Prepare the database, then serve until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m webapp.devserver", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    parser.add_argument("--no-examples", action="store_true", help="do not queue the example tasks on a first run")
    args = parser.parse_args(argv)

    app = create_app()
    with app.app_context():
        upgrade_schema()
        ensure_demo_user()
        if not args.no_examples:
            queued = seed_examples(AsyncTaskService())
            if queued:
                print(f"  Queued {queued} example tasks (a first run): see them at /tasks.")
    print(f"Console: http://{args.host}:{args.port}/  (log in as shown above; API docs at /api/openapi.json)",
          flush=True)
    start_consumer_when_safe(app)
    run_simple(args.host, args.port, app, use_reloader=False, use_debugger=False, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
