"""The database schema's migrations: ``flask db``, the start-up check and upgrade, without a cost
to commands that never migrate.

Flask-Migrate imports alembic, which imports Mako, Pygments and every dialect's DDL module: a
quarter of a second of every ``flask`` command and of every web process's start, spent even
where nothing migrates. So the app only records *how* it migrates (``app.extensions['migrate']``,
what Flask-Migrate's functions and ``migrations/env.py`` read), and Flask-Migrate is imported
when a migration really runs: a ``flask db …`` sub-command, or ``upgrade_schema`` on a database
that is behind.

``schema_is_current`` answers "is an upgrade needed?" in one query: the revisions in
``alembic_version`` against the heads of ``migrations/versions``, read from the files' literal
``revision``/``down_revision`` assignments (what alembic itself would find, without importing
the scripts).
"""

from __future__ import annotations

import ast
import contextlib
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app, g
from flask.cli import with_appcontext
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

# The options the app has always migrated with (Flask-Migrate's ``Migrate(...)`` keywords).
CONFIGURE_ARGS: dict[str, Any] = {"compare_type": True, "render_as_batch": True}

# alembic logs every built-in plugin at INFO as it is imported. Imported before the app set up
# logging (as it was), those lines went nowhere; imported lazily they would open each `flask db`.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


class MigrationSettings:
    """``app.extensions['migrate']``: the attributes Flask-Migrate's ``_MigrateConfig`` offers."""

    def __init__(self, db: SQLAlchemy, directory: str, configure_args: dict[str, Any]) -> None:
        self.db = db
        self.directory = directory
        self.configure_args = configure_args

    @cached_property
    def migrate(self) -> Any:
        """Flask-Migrate's ``Migrate``, built on first use (its ``get_config`` runs every command)."""
        from flask_migrate import Migrate

        return Migrate(db=self.db, directory=self.directory, **self.configure_args)

    @property
    def metadata(self) -> Any:
        return self.db.metadata


def _flask_migrate_commands() -> click.Group:
    from flask_migrate.cli import db as commands

    return commands


class MigrationCommands(click.Group):
    """``flask db``'s sub-commands are Flask-Migrate's, looked up only when one is named or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_flask_migrate_commands().commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return _flask_migrate_commands().commands.get(cmd_name)


# The same group options and callback as Flask-Migrate's own ``db`` group (its sub-commands read
# ``g.directory`` and ``g.x_arg``).
@click.group("db", cls=MigrationCommands)
@click.option("-d", "--directory", default=None, help='Migration script directory (default is "migrations")')
@click.option("-x", "--x-arg", multiple=True, help="Additional arguments consumed by custom env.py scripts")
@with_appcontext
def db_cli(directory: str | None, x_arg: tuple[str, ...]) -> None:
    """Perform database migrations."""
    g.directory = directory
    g.x_arg = x_arg


def init_migrations(app: Flask, db: SQLAlchemy, directory: Path) -> None:
    """What ``Migrate().init_app(app, db, directory, render_as_batch=True)`` did, importing nothing."""
    app.extensions["migrate"] = MigrationSettings(db, str(directory), dict(CONFIGURE_ARGS))
    app.cli.add_command(db_cli)


def head_revisions(directory: Path) -> set[str]:
    """The revisions no other migration revises: what ``alembic upgrade head`` ends at."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in sorted((directory / "versions").glob("*.py")):
        assigned = _literal_assignments(path)
        revision = assigned.get("revision")
        if not isinstance(revision, str):
            continue
        revisions.add(revision)
        down = assigned.get("down_revision")
        revised.update([down] if isinstance(down, str) else list(down or ()))
    return revisions - revised


def _literal_assignments(path: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                with contextlib.suppress(ValueError):  # not a literal: alembic would fail on it too
                    values[target.id] = ast.literal_eval(node.value)
    return values


def applied_revisions(db: SQLAlchemy) -> set[str]:
    """The revisions recorded in ``alembic_version`` (none on a new database)."""
    try:
        with db.engine.connect() as connection:
            return {row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))}
    except DBAPIError:
        return set()  # no alembic_version table yet


def schema_is_current() -> bool:
    """True when the app's database is at the migrations' head (one query, nothing imported)."""
    settings: MigrationSettings = current_app.extensions["migrate"]
    heads = head_revisions(Path(settings.directory))
    return bool(heads) and applied_revisions(settings.db) == heads


def upgrade_schema() -> bool:
    """Run ``flask db upgrade`` in this process when the database is behind; whether it ran."""
    if schema_is_current():
        return False
    from flask_migrate import upgrade

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        upgrade()
    finally:
        # migrations/env.py applies alembic.ini's logging to the whole process (fileConfig): the
        # server started next keeps the app's own log format (text or JSON lines) instead.
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    return True
