"""``flask users ...``: create console users; ``ensure-demo`` gives ``make run`` a first login."""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup

from ..accounts.models import Role
from ..accounts.users import count_users, create_user, generate_password, reset_password
from ..tasks.errors import ValidationError

users_cli = AppGroup("users", help="Manage console users.")


@users_cli.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice([r.value for r in Role]), default=Role.VIEWER.value,
              show_default=True, help="viewer reads; operator also cancels and retries; admin also "
                                      "manages users and tokens.")
@click.option("--password", help="The password (asked for, hidden and twice, when omitted).")
def create_command(name: str, role: str, password: str | None) -> None:
    """Create a console user with a hashed password."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = create_user(name, password or "", role, actor="cli")
    except ValidationError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    click.echo(f"created user {user.username} ({user.role})")


@users_cli.command("ensure-demo")
def ensure_demo_command() -> None:
    """If no user exists yet, create an admin user with a random password and print the login."""
    ensure_demo_user()


def ensure_demo_user() -> None:
    """``users ensure-demo``, also run by ``make run``'s server before it starts (webapp/devserver.py)."""
    if count_users() > 0:
        return
    password = generate_password()
    create_user("admin", password, Role.ADMIN.value, actor="cli")
    click.echo("")
    click.echo("  No console user existed, so one was created:")
    click.echo("    username: admin")
    click.echo(f"    password: {password}")
    click.echo("  (shown only now; add more with: .venv/bin/flask --app webapp users create NAME --role operator)")
    click.echo("")


@users_cli.command("set-password")
@click.argument("name")
@click.option("--password", help="The new password (asked for, hidden and twice, when omitted).")
def set_password_command(name: str, password: str | None) -> None:
    """Set a user's password (the policy applies); every session of the user ends."""
    if password is None:
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    try:
        user = reset_password(name, password or "", actor="cli")
    except ValidationError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    click.echo(f"password of {user.username} set; their sessions have ended")
