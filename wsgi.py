"""WSGI entry point: ``gunicorn wsgi:app``. Starts the in-process consumer when enabled.

Under gunicorn with ``preload_app`` this module is imported by the master; the consumer then
starts in each worker after the fork instead (see webapp/gunicorn_hooks.py).
"""

from webapp import create_app
from webapp.gunicorn_hooks import start_consumer_when_safe

app = create_app()
start_consumer_when_safe(app)
