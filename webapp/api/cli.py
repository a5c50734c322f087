"""``flask tokens create|revoke|list``: manage the API's bearer tokens (audited)."""

from __future__ import annotations

import getpass
import sys
from typing import Any

import click
from flask.cli import AppGroup

from ..accounts.tokens import (
    REACH_OWN,
    REACHES,
    SCOPES,
    TokenError,
    audit_refusal,
    create_token,
    list_tokens,
    revoke_token,
    update_token,
)
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


def _permission_options(command: Any) -> Any:
    """--scope, --allow-recipient and --notifications-per-hour, shared by create and update."""
    command = click.option("--notifications-per-hour", type=click.IntRange(0, 1_000_000),
                           help="Most notifications this token's tasks may send per hour (beyond: SKIPPED).")(command)
    command = click.option("--allow-recipient", "recipients", multiple=True, metavar="DOMAIN|ADDRESS",
                           help="Only these mail recipients (created_by) and webhook hosts (repeatable).")(command)
    return click.option("--scope", "scopes", multiple=True, type=click.Choice(SCOPES),
                        help="submit, read, operate (repeatable; default: all three).")(command)


@tokens_cli.command("create")
@click.argument("name")
@_permission_options
@click.option("--reach", type=click.Choice(REACHES), default=REACH_OWN, show_default=True,
              help="own: only the tasks this token submits; all: every task (grant explicitly).")
def create_command(name: str, scopes: tuple[str, ...], reach: str, recipients: tuple[str, ...],
                   notifications_per_hour: int | None) -> None:
    """Create a token called NAME; prints the token once, as the last line (only its hash is kept)."""
    actor = _cli_actor()
    try:
        row, secret = create_token(name, actor=actor, scopes=scopes or None, reach=reach,
                                   allowed_recipients=recipients or None,
                                   notifications_per_hour=notifications_per_hour)
    except TokenError as exc:
        audit_refusal(actor, "token.create", _loggable(name), str(exc))
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"Created API token {name!r} (scopes {row.scopes}, reach {row.reach}). "
               "It is shown only now; store it safely.", err=True)
    click.echo(secret)


@tokens_cli.command("update")
@click.argument("name")
@_permission_options
@click.option("--reach", type=click.Choice(REACHES), help="own or all.")
@click.option("--any-recipient", is_flag=True, help="Drop the recipient restriction.")
@click.option("--no-notification-limit", is_flag=True, help="Drop the notifications-per-hour limit.")
def update_command(name: str, scopes: tuple[str, ...], reach: str | None, recipients: tuple[str, ...],
                   notifications_per_hour: int | None, any_recipient: bool, no_notification_limit: bool) -> None:
    """Narrow (or widen) token NAME: only the options given change; --scope replaces the scopes."""
    actor = _cli_actor()
    changes: dict[str, Any] = {}
    if scopes:
        changes["scopes"] = scopes
    if reach is not None:
        changes["reach"] = reach
    if recipients or any_recipient:
        changes["allowed_recipients"] = None if any_recipient else recipients
    if notifications_per_hour is not None or no_notification_limit:
        changes["notifications_per_hour"] = None if no_notification_limit else notifications_per_hour
    try:
        if not changes:
            raise TokenError("nothing to change: give --scope, --reach, --allow-recipient or a limit")
        row = update_token(name, actor=actor, **changes)
    except TokenError as exc:
        audit_refusal(actor, "token.update", _loggable(name), str(exc))
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"token {name!r}: scopes {row.scopes}, reach {row.reach}, "
               f"recipients {row.allowed_recipients or 'any'}, "
               f"notifications per hour {row.notifications_per_hour if row.notifications_per_hour is not None else 'no limit'}")


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
    """List tokens: name, state, created, last used, scopes, reach (the secrets are not kept)."""
    for row in list_tokens():
        state = "revoked" if row.revoked_at is not None else "active"
        click.echo(f"{row.name}\t{state}\t{iso(row.created_at)}\t{iso(row.last_used_at) or '-'}"
                   f"\t{row.scopes}\t{row.reach}")
