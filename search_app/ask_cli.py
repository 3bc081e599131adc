"""``search-app ask``: a question to a running app, answered in the terminal.

Why through the HTTP API (the Python client) rather than in-process: loading the model
and the index takes seconds to minutes, the running app has them warm, and the terminal
then sees exactly what the browser and scripts see (threads, stored answers, share ids).
"""

from __future__ import annotations

import re
import sys

import click
import httpx
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from search_app.client import Answer, SearchAPIError, SearchClient
from search_app.config import Settings
from search_app.events import (
    DeltaEvent,
    DoneEvent,
    PlanEvent,
    QuoteEvent,
    RelatedEvent,
    SearchEvent,
    SourcesEvent,
    SupportEvent,
    TimingsEvent,
)

__all__ = ["ask_command"]

_CITATION = re.compile(r"\[citation:(\d+)\]")


def _default_url() -> str:
    settings = Settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


@click.command("ask")
@click.argument("question")
@click.option("--base-url", default=None, metavar="URL",
              help="The running app [default: http://HOST:PORT from the settings].")
@click.option("--thread", "thread_id", default=None, metavar="ID",
              help="Follow up in this thread (printed after each answer).")
@click.option("--provider", default=None, help="A configured provider (chain).")
@click.option("--sources", type=click.IntRange(1, 20), default=None,
              help="Search results to use.")
@click.option("--read-pages/--snippets-only", default=None,
              help="Read the result pages, or answer from the snippets.")
@click.option("--related/--no-related", default=True, show_default=True,
              help="Generate related questions.")
@click.option("--site", "sites", multiple=True, metavar="DOMAIN",
              help="Only results from this site (subdomains included); repeatable. "
                   "Sonar's search_domain_filter.")
@click.option("--exclude-site", "excluded", multiple=True, metavar="DOMAIN",
              help="No results from this site; repeatable.")
@click.option("--recency", type=click.Choice(["hour", "day", "week", "month", "year"]),
              default=None, help="Only results published in the past hour, day, ...")
@click.option("--after", default=None, metavar="DATE",
              help="Only results published on or after DATE (M/D/YYYY or YYYY-MM-DD).")
@click.option("--before", default=None, metavar="DATE",
              help="Only results published on or before DATE.")
@click.option("--research", is_flag=True,
              help="Research mode: plan sub-questions, search each, write a sectioned "
                   "report (slower).")
@click.option("--collection", "collections", multiple=True, metavar="NAME",
              help="Also search this collection of your uploaded documents "
                   "(POST /api/documents); repeatable.")
@click.option("--no-web", is_flag=True,
              help="With --collection: answer only from the collections.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the finished answer as one JSON object (for scripts).")
@click.option("--lead/--no-lead", default=None,
              help="Open the answer with the sources' own words (a quote), or not "
                   "[default: the app's setting].")
@click.option("--show-withheld", is_flag=True,
              help="Also print the sentences strict grounding withheld (unsupported).")
@click.option("--api-key", default=None, help="Bearer key, when the app requires one.")
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Seconds to wait for the next byte of the answer.")
def ask_command(question: str, base_url: str | None, thread_id: str | None,
                provider: str | None, sources: int | None, read_pages: bool | None,
                related: bool, sites: tuple[str, ...], excluded: tuple[str, ...],
                recency: str | None, after: str | None, before: str | None,
                research: bool, collections: tuple[str, ...], no_web: bool, as_json: bool,
                lead: bool | None, show_withheld: bool, api_key: str | None,
                timeout: float) -> None:
    """Ask QUESTION; the answer streams in with numbered sources."""
    url = base_url or _default_url()
    domains = [*sites, *(f"-{d.lstrip('-')}" for d in excluded)]
    controls = {"thread_id": thread_id, "provider": provider, "sources": sources,
                "read_pages": read_pages, "related": related,
                "search_domain_filter": domains or None, "search_recency_filter": recency,
                "search_after_date_filter": after, "search_before_date_filter": before,
                "mode": "research" if research else None,
                "collections": list(collections) or None, "web": False if no_web else None,
                "lead": lead}
    out = Console(highlight=False, soft_wrap=True)
    try:
        with SearchClient(url, api_key=api_key,
                          timeout=httpx.Timeout(timeout, connect=10.0)) as client:
            if as_json:
                answer = client.ask(question, **controls)
                click.echo(answer.model_dump_json(exclude={"events"}, indent=2))
                return
            _stream(client, question, controls, out, show_withheld)
    except SearchAPIError as exc:
        _fail(f"{exc.message} ({exc.code})")
    except httpx.TransportError as exc:
        _fail(f"cannot reach the app at {url}: {str(exc) or type(exc).__name__}")


def _fail(message: str) -> None:
    """One line on stderr, exit status 1 (never wrapped: scripts grep it)."""
    click.echo("error: " + " ".join(message.split()), err=True)
    sys.exit(1)


def _with_chips(text: str) -> Text:
    """The answer text with ``[citation:N]`` shown as a highlighted ``[N]``; the text is
    never read as markup (a page could carry rich's ``[tags]``)."""
    out = Text()
    last = 0
    for match in _CITATION.finditer(text):
        out.append(text[last:match.start()])
        out.append(f"[{match.group(1)}]", style="bold cyan")
        last = match.end()
    out.append(text[last:])
    return out


def _stream(client: SearchClient, question: str, controls: dict[str, object],
            out: Console, show_withheld: bool = False) -> None:
    events = []
    for event in client.stream(question, **controls):  # type: ignore[arg-type]
        events.append(event)
        match event:
            case SearchEvent() if event.search_query != event.query or event.filters:
                where = f" ({escape(event.filters)})" if event.filters else ""
                out.print(f"[dim]searching: {escape(event.search_query)}{where}[/dim]")
            case PlanEvent():
                out.print("[dim]plan:[/dim]")
                for n, step in enumerate(event.sub_questions, 1):
                    out.print(f"[dim]  {n}. {escape(step)}[/dim]")
            case SourcesEvent():
                for s in event.sources:
                    out.print(f"[dim][{s.number}] {escape(s.title)} ({escape(s.site)})[/dim]")
                out.print()
            case QuoteEvent():  # its text follows as a "> " line: say where it is from
                out.print(f"[dim]quoted from source [{event.source}]:[/dim]")
            case DeltaEvent():
                out.print(_with_chips(event.text), end="")
            case SupportEvent() if event.withheld:
                n = event.withheld
                out.print(f"\n[dim]{n} unsupported sentence{'s' if n != 1 else ''} withheld "
                          "(not supported by the sources; --show-withheld lists them)[/dim]")
                if show_withheld:
                    for s in event.sentences:
                        if s.withheld:
                            out.print(f"[dim]  withheld: {escape(s.sentence)}[/dim]")
            case RelatedEvent() if event.questions:
                out.print("\n\n[bold]Related[/bold]")
                for q in event.questions:
                    out.print(f"  - {escape(q)}")
            case TimingsEvent():
                out.print(f"\n[dim]search {event.search_ms:.0f} ms, read {event.read_ms:.0f} "
                          f"ms, rank {event.rank_ms:.0f} ms, first token "
                          f"{event.ttft_ms or 0:.0f} ms, total {event.total_ms:.0f} ms[/dim]")
            case DoneEvent():
                pass
    answer = Answer.from_events(events)  # raises on an error event
    out.print("[bold]Sources[/bold]")
    for s in answer.sources:
        out.print(f"  [{s.number}] {escape(s.title)} - {escape(s.url)}")
    out.print(f"[dim]thread {answer.thread_id} (follow up: --thread {answer.thread_id}); "
              f"answer id {answer.search_id}[/dim]")
