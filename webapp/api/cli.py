"""``flask tokens create|revoke|list``: manage the API's bearer tokens (audited)."""

from __future__ import annotations

import getpass
import sys

import click
from flask.cli import AppGroup

from ..accounts.tokens import TokenError, audit_refusal, create_token, list_tokens, revoke_token
from ..tasks.serialize import iso

tokens_cli = AppGroup("tokens", help="Create, list and revoke API bearer tokens.")


def _cli_actor() -> str:
    """Who ran the command, as recorded in the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli"


def _loggable(name: str) -> str:
    """A refused name as the audit log can store it (bounded, no NUL that PostgreSQL rejects)."""
    return name[:200].replace("\x00", "?")


@tokens_cli.command("create")
@click.argument("name")
def create_command(name: str) -> None:
    """Create a token called NAME; prints the token once, as the last line (only its hash is kept)."""
    actor = _cli_actor()
    try:
        _row, secret = create_token(name, actor=actor)
    except TokenError as exc:
        audit_refusal(actor, "token.create", _loggable(name), str(exc))
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"Created API token {name!r}. It is shown only now; store it safely.", err=True)
    click.echo(secret)


@tokens_cli.command("revoke")
@click.argument("name")
def revoke_command(name: str) -> None:
    """Revoke the token called NAME; requests using it get 401 from now on."""
    actor = _cli_actor()
    try:
        revoke_token(name, actor=actor)
    except TokenError as exc:
        audit_refusal(actor, "token.revoke", _loggable(name), str(exc))
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"revoked token {name!r}")


@tokens_cli.command("list")
def list_command() -> None:
    """List tokens: name, state, created, last used (the secrets themselves are not kept)."""
    for row in list_tokens():
        state = "revoked" if row.revoked_at is not None else "active"
        click.echo(f"{row.name}\t{state}\t{iso(row.created_at)}\t{iso(row.last_used_at) or '-'}")
