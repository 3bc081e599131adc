"""``search-app users add|list|remove|new-key``: accounts for ``--multi-user``.

Run on the server, against the same store the app uses (``--data-dir`` /
``--store-path``, or their environment variables); a running app sees changes within
seconds. Errors are one line and a non-zero exit.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from search_app.config import Settings
from search_app.store import Store
from search_app.users import MIN_PASSWORD, UserError, Users

__all__ = ["users_group"]

_WHERE = [
    click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                 help="The app's data folder [env: SEARCH_APP_DATA_DIR]."),
    click.option("--store-path", type=click.Path(path_type=Path), default=None,
                 help="The app's answer store, if not in the data folder "
                      "[env: SEARCH_APP_STORE_PATH]."),
]


def _where(func: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_WHERE):
        func = option(func)
    return func


def _users(data_dir: Path | None, store_path: Path | None) -> tuple[Users, Store]:
    overrides = {k: v for k, v in (("data_dir", data_dir), ("store_path", store_path)) if v}
    store = Store(Settings(**overrides).store_location())  # SEARCH_APP_STORE_URL too
    return Users(lambda: store), store


@click.group("users")
def users_group() -> None:
    """Accounts for --multi-user: add, list, remove, new API key."""


@users_group.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from standard input (scripts) instead of asking.")
@_where
def add_user(name: str, password_stdin: bool, data_dir: Path | None,
             store_path: Path | None) -> None:
    """Create NAME with a password; prints the user's API key once."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt(f"Password for {name} (at least {MIN_PASSWORD} characters)",
                                hide_input=True, confirmation_prompt=True)
    users, store = _users(data_dir, store_path)
    try:
        key = users.add(name, password)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"added {name}; its API key (shown once, for API clients: "
               f"Authorization: Bearer ...):\n{key}")


@users_group.command("list")
@_where
def list_users(data_dir: Path | None, store_path: Path | None) -> None:
    """Every user and when it was made."""
    users, store = _users(data_dir, store_path)
    try:
        found = users.list()
    finally:
        store.close()
    for user in found:
        made = time.strftime("%Y-%m-%d %H:%M", time.gmtime(user.created))
        click.echo(f"{user.name}\tcreated {made} UTC")
    if not found:
        click.echo("no users yet: search-app users add NAME")


@users_group.command("remove")
@click.argument("name")
@_where
def remove_user(name: str, data_dir: Path | None, store_path: Path | None) -> None:
    """Delete NAME (signed out within seconds; their stored answers stay, unlisted)."""
    users, store = _users(data_dir, store_path)
    try:
        users.remove(name)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"removed {name}")


@users_group.command("new-key")
@click.argument("name")
@_where
def new_key(name: str, data_dir: Path | None, store_path: Path | None) -> None:
    """Replace NAME's API key (the old one stops working at once)."""
    users, store = _users(data_dir, store_path)
    try:
        key = users.new_key(name)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"new API key for {name} (shown once):\n{key}")
