"""What ``create_app`` checks about the process it starts in: the secret key, the command it runs.

* A configured ``SECRET_KEY`` that is short or a documented placeholder signs sessions that an
  attacker can forge (or brute-force), so outside development and testing it stops start-up
  with one line naming the setting and the fix.
* A ``flask`` command other than ``flask run`` (``db upgrade``, ``tasks worker``, ``tokens
  create``, ...) serves no request, so it neither needs a session key nor may start the embedded
  consumer: ``flask --app wsgi db upgrade`` on a new database must not write a worker row before
  the tables exist, and ``tasks worker`` runs exactly the one consumer it builds itself.
"""

from __future__ import annotations

from typing import Any

import click
from flask.cli import FlaskGroup, run_command

from .config import ConfigError

MIN_SECRET_KEY_LENGTH = 32
# Fewer distinct characters than this is a pattern ("aaaa…", "0000…"), not a random key.
MIN_SECRET_KEY_DISTINCT = 10
# Keys that documentation, tutorials and our own examples show: public, so never secret.
PLACEHOLDER_SECRET_KEYS = frozenset({
    "replace-with-the-output-of-python3-c-import-secrets-print-secrets.token_hex-32",
    "change-me", "changeme", "secret", "secret-key", "secret_key", "your-secret-key",
    "dev", "development", "test", "testing", "default", "please-change-me",
})
PLACEHOLDER_MARKERS = ("replace-with", "change-me", "changeme", "your-secret")
SECRET_KEY_FIX = ("set SECRET_KEY to the output of "
                  "python3 -c 'import secrets; print(secrets.token_hex(32))', "
                  "or unset it to use a key generated into the instance folder")


def running_flask_command() -> bool:
    """True while the ``flask`` CLI runs a command other than ``flask run`` (the development server).

    The app is loaded either while the group looks up the sub-command or inside the command
    itself; in both cases the click context's root is a ``FlaskGroup``, and only the ``run``
    command serves requests.
    """
    context = click.get_current_context(silent=True)
    if context is None or not isinstance(context.find_root().command, FlaskGroup):
        return False
    return context.command is not run_command


def weak_secret_key_reason(key: str) -> str | None:
    """Why ``key`` must not sign sessions in production, or ``None`` when it may."""
    if key.strip().lower() in PLACEHOLDER_SECRET_KEYS or any(
            marker in key.lower() for marker in PLACEHOLDER_MARKERS):
        return "is a documented placeholder"
    if len(key) < MIN_SECRET_KEY_LENGTH:
        return f"is {len(key)} characters long (at least {MIN_SECRET_KEY_LENGTH} are needed)"
    if len(set(key)) < MIN_SECRET_KEY_DISTINCT:
        return "repeats a few characters (not a random key)"
    return None


def refuse_weak_secret_key(config: dict[str, Any] | Any, debug: bool) -> None:
    """Stop start-up when a configured ``SECRET_KEY`` is weak, except in development or testing."""
    if config.get("TESTING") or debug or running_flask_command():
        return
    key = config.get("SECRET_KEY")
    if not isinstance(key, str):
        return  # bytes or another type chosen by an embedding application: its own business
    reason = weak_secret_key_reason(key)
    if reason is not None:
        raise ConfigError(f"SECRET_KEY {reason}: {SECRET_KEY_FIX}")
