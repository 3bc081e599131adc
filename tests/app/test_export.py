"""The Markdown export (search_app/export.py): citations become footnotes whose labels
are unique across a thread, plain strings are escaped, nothing is added that the stored
answer does not hold. Pure functions: no app, no model."""

from __future__ import annotations

import re
from typing import Any

from search_app.events import SearchEvent, Source, SourcesEvent
from search_app.export import export_filename, thread_markdown
from search_app.store import AnswerRecord


def _source(n: int, title: str = "", url: str = "", **extra: Any) -> Source:
    return Source(number=n, title=title or f"Page {n}", url=url or f"https://ex.org/{n}",
                  site="ex.org", snippet="s", **extra)


def _record(query: str, answer: str, sources: list[Source] | None,
            ident: str = "a1") -> AnswerRecord:
    events = [SearchEvent(search_id=ident, thread_id="t1", query=query,
                          search_query=query).record()]
    if sources is not None:
        events.append(SourcesEvent(sources=sources).record())
    return AnswerRecord(id=ident, thread_id="t1", client_id=None, query=query,
                        search_query=query, answer=answer, events=events)


def _definitions(md: str) -> dict[str, str]:
    return dict(re.findall(r"^\[\^([^\]]+)\]: (.*)$", md, re.MULTILINE))


def _references(md: str) -> list[str]:
    return re.findall(r"\[\^([^\]]+)\](?!:)", md)


def test_citations_become_footnotes_with_their_sources() -> None:
    record = _record("Who designed the Eiffel Tower?",
                     "Gustave Eiffel's company[citation:1]. It is in Paris [citation:2].",
                     [_source(1, "Eiffel Tower", "https://en.wikipedia.org/wiki/Eiffel_Tower"),
                      _source(2, "Paris", "https://en.wikipedia.org/wiki/Paris")])
    md = thread_markdown([record])
    assert md == (
        "# Who designed the Eiffel Tower?\n\n"
        "Gustave Eiffel's company[^1]. It is in Paris [^2].\n\n"
        "[^1]: [Eiffel Tower](https://en.wikipedia.org/wiki/Eiffel_Tower)\n"
        "[^2]: [Paris](https://en.wikipedia.org/wiki/Paris)\n")
    assert "citation" not in md


def test_marker_variants_and_unknown_sources() -> None:
    answer = ("One[[citation:1]]. Two[citation: 2]. Three[[[citation:1]. Four[CITATION:2]]. "
              "Ghost[citation:9].")
    md = thread_markdown([_record("q", answer, [_source(1), _source(2)])])
    assert "One[^1]. Two[^2]. Three[^1]. Four[^2]. Ghost." in md
    assert set(_definitions(md)) == {"1", "2"}  # each defined once, none for source 9
    assert len(re.findall(r"^\[\^1\]:", md, re.MULTILINE)) == 1


def test_multi_turn_labels_are_unique_and_all_resolve() -> None:
    turns = [_record("First?", "A[citation:1] and B[citation:2].", [_source(1), _source(2)],
                     "a1"),
             _record("Second?", "C[citation:1].", [_source(1, "Other page")], "a2")]
    md = thread_markdown(turns)
    defs = _definitions(md)
    assert list(defs) == ["1-1", "1-2", "2-1"]
    assert _references(md) == ["1-1", "1-2", "2-1"]
    assert defs["2-1"].startswith("[Other page](")
    assert [line for line in md.splitlines() if line.startswith("#")] == [
        "# First?", "# Second?"]
    # Each answer's footnotes follow that answer, before the next question.
    assert md.index("[^1-2]: ") < md.index("# Second?") < md.index("[^2-1]: ")


def test_title_makes_turns_second_level() -> None:
    md = thread_markdown([_record("First?", "A.", None)], title="My thread")
    assert md.startswith("# My thread\n\n## First?\n\nA.\n")


def test_answer_without_sources_or_text() -> None:
    assert thread_markdown([_record("q", "Just text.", None)]) == "# q\n\nJust text.\n"
    assert thread_markdown([_record("q", "Just text.", [])]) == "# q\n\nJust text.\n"
    assert "*(no answer text)*" in thread_markdown([_record("q", "  ", None)])
    assert thread_markdown([]) == ""


def test_uncited_sources_are_listed_but_not_footnotes() -> None:
    md = thread_markdown([_record("q", "Abstained.", [_source(1, "Only page")])])
    assert _definitions(md) == {}
    assert "Other sources:\n\n- [Only page](https://ex.org/1)" in md


def test_titles_urls_and_questions_are_escaped() -> None:
    source = _source(1, "A [bracket] title\nwith *stars* <b>and</b> a_line",
                     "https://ex.org/wiki/Foo_(bar)?q=a b&x=[1]#frag", date="2024-05-01")
    md = thread_markdown([_record("What is 2*3 <script>?\n# Not a heading",
                                  "Six[citation:1].", [source])])
    heading, *_ = md.splitlines()
    assert heading == r"# What is 2\*3 \<script\>? \# Not a heading"
    definition = _definitions(md)["1"]
    assert definition == (r"[A \[bracket\] title with \*stars\* \<b\>and\</b\> a\_line]"
                          "(https://ex.org/wiki/Foo_%28bar%29?q=a%20b&x=%5B1%5D#frag), "
                          "2024-05-01")
    # The link destination has no character that could end it early.
    destination = definition.split("](", 1)[1].split(")", 1)[0]
    assert not set(destination) & set(" ()<>[]\n")


def test_non_ascii_and_ipv6_urls() -> None:
    md = thread_markdown([_record("q", "x[citation:1][citation:2]", [
        _source(1, "Café", "https://fr.wikipedia.org/wiki/Café"),
        _source(2, "Local", "http://[::1]:8080/a)b")])])
    defs = _definitions(md)
    assert defs["1"] == "[Café](https://fr.wikipedia.org/wiki/Caf%C3%A9)"
    assert defs["2"] == "[Local](http://[::1]:8080/a%29b)"


def test_non_web_urls_are_never_links() -> None:
    md = thread_markdown([_record("q", "x[citation:1]", [
        _source(1, "Evil", "javascript:alert(1)")])])
    assert _definitions(md)["1"] == "Evil (javascript:alert(1))"
    assert "](javascript" not in md


def test_filename_is_safe_ascii_from_the_first_question() -> None:
    records = [_record("Où est la Tour Eiffel? / \"quoted\" ..\\x", "a", None),
               _record("Second", "b", None)]
    assert export_filename(records) == "ou-est-la-tour-eiffel-quoted-x.md"
    assert export_filename([_record("???", "a", None)], "thread") == "thread.md"
    assert export_filename([]) == "answer.md"
    long = export_filename([_record("word " * 40, "a", None)])
    assert len(long) <= 63 and re.fullmatch(r"[a-z0-9-]+\.md", long)
    assert not long.startswith("-") and not long.endswith("-.md")
