"""Application factory."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

from dotenv import load_dotenv
from flask import Flask
from sqlalchemy.engine import make_url
from werkzeug.middleware.proxy_fix import ProxyFix

from . import models  # noqa: F401  (every table registered before migrations run)
from .api import bp as api_bp
from .cli import register_cli
from .config import ConfigError, load_settings
from .console import init_console
from .dbliveness import SUPPORTED as LIVENESS_CHECK_SUPPORTED
from .dbliveness import install_liveness_check
from .extensions import csrf, db, mail
from .health import bp as health_bp
from .logging_setup import configure_logging
from .schedules.setup import init_schedules
from .schema import init_migrations
from .startup_checks import refuse_weak_secret_key, running_flask_command
from .tasks.engine import init_engine
from .teardown_guard import guard_teardowns

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask app: config, extensions, engine, blueprints. Starts no consumer."""
    if config is None or not config.get("TESTING"):
        load_dotenv(os.environ.get("DOTENV_PATH", ".env"), override=False)
    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder=str(_asset_dir("templates")),
        static_folder=str(_asset_dir("static")),
    )
    os.makedirs(app.instance_path, exist_ok=True)
    settings = load_settings(app.instance_path, config)
    app.config.update(settings)
    refuse_weak_secret_key(app.config, app.debug)
    if running_flask_command():
        # db upgrade, tokens, tasks worker (which builds its own): no embedded consumer, whatever
        # app module the command names (webapp/startup_checks.py).
        app.config["ASYNC_TASK_CONSUMER_ENABLED"] = False
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _instance_secret_key(app.instance_path)
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", _engine_options(app.config))
    app.config.setdefault("MAIL_SUPPRESS_SEND", False)

    # Text or JSON lines; every line logged while a task runs names its id, type and attempt.
    configure_logging(app.config["ASYNC_TASK_LOG_FORMAT"])

    proxies = app.config["ASYNC_TASK_TRUSTED_PROXIES"]
    if proxies:
        # Behind nginx or a load balancer: take the client address and scheme from the headers
        # the trusted proxies set, so login throttling and Secure cookies see the real client.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)  # type: ignore[method-assign]

    db.init_app(app)
    with app.app_context():
        install_liveness_check(db.engines)  # instead of pre-ping's round trip a checkout
    init_migrations(app, db, _migrations_dir())  # flask db …; alembic is imported only when one runs
    mail.init_app(app)
    csrf.init_app(app)

    init_engine(app)

    init_schedules(app)  # recurring schedules: declared ones checked now, the job, `flask schedules`

    register_cli(app)
    _register_blueprints(app)
    guard_teardowns(app)  # last: every extension's and blueprint's callbacks are registered
    return app


def _register_blueprints(app: Flask) -> None:
    app.register_blueprint(health_bp)
    app.register_blueprint(api_bp)
    init_console(app)


def _asset_dir(name: str) -> Path:
    """Top-level ``templates/``/``static/`` in a checkout; the packaged copy when installed."""
    checkout = PROJECT_ROOT / name
    return checkout if checkout.is_dir() else Path(__file__).resolve().parent / name


def _migrations_dir() -> Path:
    checkout = PROJECT_ROOT / "migrations"
    return checkout if (checkout / "env.py").is_file() else MIGRATIONS_DIR


def _engine_options(config: dict[str, Any]) -> dict[str, Any]:
    url = str(config["SQLALCHEMY_DATABASE_URI"])
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    threads = int(config["ASYNC_TASK_CONCURRENCY"])
    # Dead pooled connections are caught by dbliveness's socket check (no round trip) instead.
    options: dict[str, Any] = {"pool_pre_ping": not LIVENESS_CHECK_SUPPORTED, "pool_size": max(5, threads + 3), "max_overflow": 10,
                               "pool_recycle": 1800}
    # PgBouncer before 1.21 in transaction mode cannot keep psycopg's server-side prepared
    # statements: "?prepare_threshold=none" in DATABASE_URL turns them off (docs/deploy.md).
    threshold = make_url(url).query.get("prepare_threshold")
    if isinstance(threshold, str):
        off = threshold.strip().lower() in ("", "none", "off")
        options["connect_args"] = {"prepare_threshold": None if off else int(threshold)}
    return options


def _instance_secret_key(instance_path: str) -> str:
    """A generated key kept in the instance folder (mode 0600) when SECRET_KEY is not set.

    Several processes may start together (gunicorn workers without preload): the key is written
    to a private temporary file and hard-linked into place, which either succeeds whole or finds
    another process's complete key, so nobody ever reads a half-written file.
    """
    path = Path(instance_path) / "secret_key"
    for _ in range(40):
        try:
            key = path.read_text().strip()
        except FileNotFoundError:
            key = None
        if key is not None and len(key) >= 32:
            return key
        if key is not None:  # an empty or short file: a writer from before this fix, or damage
            time.sleep(0.05)
            continue
        temporary = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process won; the next pass reads its key
        finally:
            temporary.unlink()
    raise ConfigError(f"SECRET_KEY is not set and {path} is empty or too short; "
                      f"delete the file to generate a new key, or set SECRET_KEY")


__all__ = ["ConfigError", "create_app"]
