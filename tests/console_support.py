"""Helpers for the console tests: users, login through the real form, CSRF tokens from pages."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient

from webapp.accounts.users import create_user

PASSWORD = "correct horse battery"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


def add_user(app: Flask, username: str, role: str, password: str = PASSWORD) -> None:
    """Create a console user directly through the accounts module."""
    with app.app_context():
        create_user(username, password, role)


def csrf_from(html: str) -> str:
    """The CSRF token a rendered page carries (form field or meta tag)."""
    match = CSRF_INPUT.search(html) or CSRF_META.search(html)
    assert match, "page has no CSRF token"
    return match.group(1)


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> str:
    """Log in through /login like a browser; returns the CSRF token of the new session."""
    token = csrf_from(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return csrf_from(client.get("/").get_data(as_text=True))


def logged_in_client(app: Flask, role: str, username: str | None = None) -> tuple[FlaskClient, str]:
    """A test client logged in as a new user of ``role``, and its CSRF token."""
    name = username or f"{role}-user"
    add_user(app, name, role)
    client = app.test_client()
    return client, login(client, name)


HTMX = {"HX-Request": "true"}


def htmx(target: str, **extra: str) -> dict[str, str]:
    """Headers htmx sends for a request swapping the element with id ``target``."""
    return {**HTMX, "HX-Target": target, **extra}
