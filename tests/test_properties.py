"""Property-based tests (hypothesis) of every parser that reads text someone else wrote:
model output (sentences, citations, related questions), pages (HTML extraction), search
providers' JSON, an upstream server's SSE stream, our own SSE stream as a client reads
it, and the Lepton protocol as its front end reads it. The property is always at least
"never an unhandled exception"; where a parser has an invariant (lossless, chunking
does not matter, only valid citations survive), that is checked too.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from httpx_sse import ServerSentEvent
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from retrieval.extract import ExtractionError, extract
from retrieval.providers import ProviderError
from retrieval.providers._web import (
    BraveProvider,
    GoogleProvider,
    SearchApiProvider,
    SearXNGProvider,
    SerperProvider,
    TavilyProvider,
)
from search_app.client import SearchAPIError, _event
from search_app.events import EVENT_NAMES, DeltaEvent, RelatedEvent, SourcesEvent
from search_app.grounding import (
    CitedStream,
    SentenceSplitter,
    citations,
    clean_citations,
    normalize_citations,
    strip_citations,
)
from search_app.related import parse_candidates
from search_app.routes.lepton import LLM_MARKER, RELATED_MARKER, MarkerGuard, _translate
from serving.engines.upstream import parse_stream_event
from serving.errors import ServingError

PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Text that looks like model output: sentence ends, citations whole and broken,
# brackets, quotes, line breaks, protocol markers, and anything else.
PIECES = ["Hello", "world", "The tower", ".", "!", "?", " ", "  ", "\n", "\n\n", '"', ")",
          "[citation:1]", "[[citation:2]]", "[citation: 3]", "[citation:99]", "[", "]",
          "[[", "citation", ":", "1.5", "Dr.", "__LLM_RESPONSE__", "__RELATED_QUESTIONS__",
          "_", "__", "LLM_RESPONSE"]
model_text = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)),
                      max_size=40).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


def chunked(text: str, cuts: list[int]) -> list[str]:
    """``text`` cut into pieces of the given sizes (the rest as the last piece)."""
    pieces, i = [], 0
    for size in cuts:
        if i >= len(text):
            break
        pieces.append(text[i:i + size])
        i += size
    if i < len(text):
        pieces.append(text[i:])
    return pieces


sizes = st.lists(st.integers(min_value=1, max_value=12), max_size=30)


@PROPERTY
@given(model_text, sizes)
def test_sentence_splitting_is_lossless_and_chunking_does_not_matter(text: str,
                                                                     cuts: list[int]) -> None:
    whole = SentenceSplitter()
    expected = whole.feed(text) + [whole.flush()]
    split = SentenceSplitter()
    got: list[str] = []
    for piece in chunked(text, cuts):
        got += split.feed(piece)
    got.append(split.flush())
    assert "".join(got) == text
    assert got == expected


@PROPERTY
@given(model_text, st.integers(min_value=0, max_value=12))
def test_citation_helpers(text: str, n_sources: int) -> None:
    cleaned = clean_citations(text, n_sources)
    assert all(1 <= n <= n_sources for n in citations(cleaned))
    assert not re.search(r"\[+citation:\s*\d+\]+", strip_citations(text), re.I)
    once = normalize_citations(text)
    assert normalize_citations(once) == once


@PROPERTY
@given(model_text, sizes, st.integers(min_value=1, max_value=5), st.booleans())
def test_cited_stream_sends_exactly_the_checked_text(text: str, cuts: list[int],
                                                     n_sources: int, cite: bool) -> None:
    """As the pipeline drives it in mark/off mode: what goes out (progress while a
    sentence is written, the rest once it is checked) is exactly the checked sentences,
    whatever the chunking; the check may add a citation before trailing space."""
    def check(sentence: str) -> str:
        checked = clean_citations(sentence, n_sources)
        if cite and not citations(checked) and strip_citations(checked):
            body = checked.rstrip()
            checked = f"{body}[citation:1]{checked[len(body):]}"
        return checked

    stream, sent, expected = CitedStream(n_sources), "", ""
    for piece in chunked(text, cuts):
        for sentence in stream.feed(piece):
            checked = check(sentence)
            expected += checked
            sent += stream.complete(checked)
        sent += stream.progress()
    last = stream.flush()
    checked = check(last)
    expected += checked
    sent += stream.complete(checked)
    assert sent == expected


@PROPERTY
@given(st.one_of(model_text, json_values.map(json.dumps),
                 st.lists(st.text(max_size=40), max_size=6).map(
                     lambda qs: json.dumps({"questions": qs})[:-3])))
def test_related_candidates_from_any_output(text: str) -> None:
    questions = parse_candidates(text)
    assert isinstance(questions, list) and all(isinstance(q, str) for q in questions)


@PROPERTY
@given(st.one_of(st.binary(max_size=2000),
                 model_text.map(lambda t: f"<html><title>{t}</title><p>{t}</p>".encode()),
                 st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))),
       st.sampled_from([None, "text/html", "text/html; charset=utf-8",
                        "text/html; charset=bogus", "text/plain", "application/pdf",
                        "application/octet-stream", "text/html; charset="]))
def test_extraction_raises_only_extraction_error(body: bytes, content_type: str | None
                                                 ) -> None:
    try:
        result = extract(body, content_type, url="http://example.test/page")
    except ExtractionError:
        return
    assert isinstance(result.text, str)


PROVIDERS = [
    SearXNGProvider(None, base_url="http://127.0.0.1:9"),  # type: ignore[arg-type]
    BraveProvider(None, api_key="k"),  # type: ignore[arg-type]
    GoogleProvider(None, api_key="k", engine_id="cx"),  # type: ignore[arg-type]
    SerperProvider(None, api_key="k"),  # type: ignore[arg-type]
    SearchApiProvider(None, api_key="k"),  # type: ignore[arg-type]
    TavilyProvider(None, api_key="k"),  # type: ignore[arg-type]
]
LIST_KEYS = ["results", "web", "items", "organic", "organic_results", "type", "kind"]


@PROPERTY
@given(st.sampled_from(PROVIDERS),
       st.dictionaries(st.sampled_from(LIST_KEYS) | st.text(max_size=6), json_values,
                       max_size=4))
def test_provider_parsers_raise_only_provider_errors(provider: Any, payload: dict[str, Any]
                                                     ) -> None:
    try:
        results = provider.parse(payload)
    except ProviderError:
        return
    assert all(r.url.startswith(("http://", "https://")) for r in results)


@PROPERTY
@given(st.one_of(json_values.map(json.dumps), st.text(max_size=80),
                 st.fixed_dictionaries({"choices": json_values, "usage": json_values}
                                       ).map(json.dumps)))
def test_upstream_stream_chunks_parse_or_fail_as_serving_errors(data: str) -> None:
    try:
        event = parse_stream_event(data)
    except ServingError:
        return
    assert all(isinstance(t, str) and t for t in event.texts)


@PROPERTY
@given(st.sampled_from(sorted(EVENT_NAMES)),
       st.one_of(json_values.map(json.dumps), st.text(max_size=60)))
def test_client_reads_any_event_or_says_the_stream_is_bad(name: str, data: str) -> None:
    try:
        _event(ServerSentEvent(event=name, data=data))
    except SearchAPIError as exc:
        assert exc.code == "bad_stream"


def front_end_split(response: str) -> tuple[str, str, str | None]:
    """How search_with_lepton's front end reads a /query response."""
    contexts, _, rest = response.partition(LLM_MARKER)
    answer, marker, related = rest.partition(RELATED_MARKER)
    return contexts, answer, related if marker else None


@PROPERTY
@given(st.lists(model_text, max_size=12), st.lists(st.text(max_size=30), max_size=3))
@example(deltas=["\u200b"], related=[])  # found by CI: the model's own zero-width space
def test_lepton_markers_in_the_answer_cannot_break_the_protocol(deltas: list[str],
                                                                related: list[str]) -> None:
    sources = SourcesEvent(sources=[], relevant=True)
    guard, out = MarkerGuard(), _translate(sources, True)
    for text in deltas:
        out += guard.feed(text)
    out += guard.flush()
    if related:
        out += _translate(RelatedEvent(questions=related), True)
    contexts, answer, tail = front_end_split(out)
    assert json.loads(contexts) == []
    # The guard breaks markers with zero-width spaces; the model may write its own too.
    assert answer.replace("\u200b", "") == "".join(deltas).replace("\u200b", "")
    assert (json.loads(tail) == [{"question": q} for q in related[:5]]) if related \
        else tail is None


def test_delta_event_round_trip_through_the_client() -> None:
    """A fixed case the properties rely on: the client rebuilds what the server sent."""
    event = DeltaEvent(text="a\n\nb: c\r\n")
    assert _event(ServerSentEvent(event=event.name, data=event.model_dump_json())) == event


@pytest.mark.parametrize("data", ['{"choices": "x"}', "[1, 2]", "<html>", '{"choices": [1]}'])
def test_upstream_garbage_examples(data: str) -> None:
    try:
        parse_stream_event(data)
    except ServingError as exc:
        assert exc.status_code == 502


@PROPERTY
@given(st.sampled_from(sorted(EVENT_NAMES)), st.text(max_size=200), sizes)
def test_sse_framing_round_trips_through_the_client_decoder(name: str, text: str,
                                                            cuts: list[int]) -> None:
    """What sse-starlette frames (any text, line breaks included), httpx-sse (the
    client's decoder) reads back whole, however the bytes are cut on the way."""
    from httpx_sse._decoders import SSEDecoder, SSELineDecoder
    from sse_starlette import ServerSentEvent as Outgoing

    payload = json.dumps({"text": text})  # events carry JSON: one line, as the app sends
    for data in (payload, text):
        wire = Outgoing(data=data, event=name).encode().decode()
        lines, decoder, events = SSELineDecoder(), SSEDecoder(), []
        for piece in chunked(wire, cuts) + [""]:
            for line in lines.decode(piece) if piece else lines.flush():
                event = decoder.decode(line)
                if event is not None:
                    events.append(event)
        assert [(e.event, e.data) for e in events] == [
            (name, data.replace("\r\n", "\n").replace("\r", "\n"))]
