"""The ``search-app`` command.

Every :class:`~search_app.config.Settings` field is also a flag of the commands that use
it (generated from the settings, so ``--help`` always lists every setting with its
environment variable); a flag beats the environment, which beats the default.
"""

from __future__ import annotations

import json
import logging
import sys
import typing
from collections.abc import Callable
from typing import Any

import click
from pydantic import ValidationError

from evals.cli import eval_group
from search_app.ask_cli import ask_command
from search_app.config import ENV_PREFIX, Settings
from search_app.models_cli import models_group
from search_app.retrieval_cli import index_command, search_command
from search_app.users_cli import users_group

__all__ = ["main", "cli"]

# Flags whose name differs from the field (kept as vLLM spells them).
_FLAG_NAMES = {"api_keys": "api-key", "cors_origins": "cors-origin"}


def _settings_options(fields: list[str] | None = None) -> Callable[[Callable[..., Any]],
                                                                   Callable[..., Any]]:
    """Decorate a command with one option per Settings field."""
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for name, field in reversed(list(Settings.model_fields.items())):
            if fields is not None and name not in fields:
                continue
            flag = "--" + _FLAG_NAMES.get(name, name.replace("_", "-"))
            env = ENV_PREFIX + name.upper()
            default = field.get_default(call_default_factory=True)
            shown = "" if default in (None, [], "") or "key" in name else f" [default: {default}]"
            help_text = f"{field.description or ''}{shown} [env: {env}]"
            annotation = field.annotation
            origin = typing.get_origin(annotation)
            if annotation is bool:
                option = click.Option([f"{flag}/--no-{flag[2:]}", name], default=None,
                                      help=help_text)
            elif origin is list or (origin is typing.Annotated):
                option = click.Option([flag, name], multiple=True, help=help_text)
            else:
                option = click.Option([flag, name], default=None, help=help_text,
                                      metavar=name.upper())
            func.__click_params__ = [*getattr(func, "__click_params__", []), option]  # type: ignore[attr-defined]
        return func
    return decorate


def _server_settings(overrides: dict[str, Any]) -> Settings:
    """Settings for serve / serve-model: also checks a catalog ``--model NAME`` is pulled."""
    from search_app.models import ModelPullError

    settings = _load_settings(overrides)
    try:
        settings.engine_options()
    except ModelPullError as exc:
        raise click.UsageError(str(exc)) from None
    return settings


def _load_settings(overrides: dict[str, Any]) -> Settings:
    given = {k: v for k, v in overrides.items() if v is not None and v != ()}
    for key, value in list(given.items()):
        if isinstance(value, tuple):
            given[key] = list(value)
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise click.UsageError(f"invalid setting {where}: {first['msg']}") from None
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"invalid JSON in a setting: {exc}") from None


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs full URLs at INFO; some search APIs take their key in the query string.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _run_server(app: Any, settings: Settings) -> None:
    """Serve until stopped; exit 1 with one line when the models cannot start (the
    lifespan reports it through ``app.state.on_fatal``)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        timeout_graceful_shutdown=5))
    fatal: list[str] = []

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        server.should_exit = True

    app.state.on_fatal = on_fatal
    server.run()
    if fatal:
        click.echo(f"search-app: error: the model could not start: {fatal[0]}", err=True)
        sys.exit(1)
    if not server.started:  # e.g. the port was taken: uvicorn has said why
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="search-app")
def cli() -> None:
    """search-app: self-hosted AI search with its own OpenAI-compatible model server."""


_SERVE_MODEL_FIELDS = [name for name in Settings.model_fields if name != "data_dir"]


@cli.command("serve")
@_settings_options()
def serve(**overrides: Any) -> None:
    """Run the whole app (APIs and the in-process model) on HOST:PORT."""
    settings = _server_settings(overrides)
    _configure_logging(settings.log_level)
    from search_app.app import create_app

    _run_server(create_app(settings), settings)


@cli.command("serve-model")
@_settings_options(_SERVE_MODEL_FIELDS)
def serve_model(**overrides: Any) -> None:
    """Run only the OpenAI-compatible model server (a drop-in for `vllm serve`)."""
    settings = _server_settings(overrides)
    _configure_logging(settings.log_level)
    from serving.app import create_app

    _run_server(create_app(settings.server_options()), settings)


_MCP_FIELDS = [name for name in Settings.model_fields if name not in ("host", "port")]


@cli.command("mcp")
@_settings_options(_MCP_FIELDS)
def mcp(**overrides: Any) -> None:
    """Serve the search and ask tools over MCP on stdin/stdout (for Claude Desktop and
    other MCP clients; `serve` offers the same at /mcp over HTTP). Logs go to stderr:
    stdout carries the protocol."""
    settings = _server_settings(overrides)
    _configure_logging(settings.log_level)  # stderr (logging's default stream)
    from search_app.mcp_server import serve_stdio

    serve_stdio(settings)


cli.add_command(index_command)
cli.add_command(ask_command)
cli.add_command(search_command)
cli.add_command(eval_group)
cli.add_command(models_group)
cli.add_command(users_group)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="search-app", standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
