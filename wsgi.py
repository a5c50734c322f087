"""WSGI entry point: ``gunicorn wsgi:app``. Starts the in-process consumer when enabled."""

from webapp import create_app
from webapp.tasks.engine import start_embedded_consumer

app = create_app()
start_embedded_consumer(app)
