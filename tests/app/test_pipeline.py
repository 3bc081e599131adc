"""The pipeline itself: disconnects, context packing, budgets, grounding helpers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from search_app.events import DeltaEvent, SourcesEvent
from search_app.grounding import (
    CitedStream,
    SentenceSplitter,
    citations,
    clean_citations,
    normalize_citations,
)
from search_app.pipeline import AnswerRequest, PipelineOptions, rewrite_query
from search_app.store import AnswerRecord, Store
from tests.app.support import ANSWER, RESULTS, ScriptedEngine, make_pipeline


async def test_disconnect_aborts_generation_and_stores_nothing(tmp_path: Path) -> None:
    engine = ScriptedEngine(["Paris is", " the capital.", " More"] + [" words"] * 50,
                            delay_s=0.01)
    store = Store(tmp_path / "s.sqlite")
    pipeline = make_pipeline(engine, store)
    # lead off: the first delta is then the model's (the quote comes before generation)
    request = AnswerRequest(query="What is the capital of France?", grounding="mark",
                            lead=False)
    stream = pipeline.run(request)
    async for event in stream:
        if isinstance(event, DeltaEvent):
            break
    await stream.aclose()  # what the route does when the client goes away
    await asyncio.sleep(0)
    assert any(r.startswith("answer-") for r in engine.aborted)
    assert engine.running == 0
    assert store.get_answer(request.search_id) is None


async def test_packing_respects_the_context_window() -> None:
    engine = ScriptedEngine(context_length=135)
    pipeline = make_pipeline(engine, None, results=RESULTS,
                             options=PipelineOptions(answer_max_tokens=32,
                                                     template_overhead=8))
    events = [e async for e in pipeline.run(AnswerRequest(query="Eiffel Tower Paris?",
                                                          related=False))]
    assert events[-1].name == "done"
    prompt = " ".join(m["content"] for m in engine.requests[0].messages or [])
    assert await engine.count_tokens(prompt) + 32 <= 135
    sources = next(e for e in events if isinstance(e, SourcesEvent)).sources
    assert 1 <= len(sources) < 3  # not everything fits


async def test_context_tokens_caps_the_packed_sources() -> None:
    """answer_context_tokens: fewer source tokens for a shorter prefill, whatever the
    window would allow."""
    async def sources_with(limit: int | None) -> int:
        engine = ScriptedEngine(context_length=2048)
        pipeline = make_pipeline(engine, None, options=PipelineOptions(context_tokens=limit))
        events = [e async for e in pipeline.run(AnswerRequest(query="Eiffel Tower Paris?",
                                                              related=False))]
        system = (engine.requests[0].messages or [])[0]["content"]
        assert limit is None or await engine.count_tokens(
            system.split("<sources>", 1)[1].split("</sources>")[0]) <= limit
        return len(next(e for e in events if isinstance(e, SourcesEvent)).sources)

    assert await sources_with(None) == 3
    assert 1 <= await sources_with(30) < 3


async def test_answer_budget_stops_with_timeout() -> None:
    engine = ScriptedEngine(["Paris is the capital."] + [" slow"] * 100, delay_s=0.02)
    pipeline = make_pipeline(engine, None, options=PipelineOptions(answer_timeout_s=0.2))
    events = [e async for e in pipeline.run(AnswerRequest(query="Paris?", related=False))]
    assert events[-1].name == "done" and events[-1].finish_reason == "timeout"
    timings = next(e for e in events if e.name == "timings")
    assert any(f.startswith("answer:") for f in timings.fallbacks)
    assert engine.running == 0


async def test_related_failure_falls_back_to_the_sources() -> None:
    """Garbage from the model is no reason to offer nothing: the sources the answer was
    built from still give follow-ups; and with related off there are none."""
    engine = ScriptedEngine(related="not json")
    events = [e async for e in make_pipeline(engine, None).run(AnswerRequest(query="q?"))]
    titles = [s.title for s in next(e for e in events if e.name == "sources").sources]
    questions = next(e for e in events if e.name == "related").questions
    assert questions == [f"What is known about {t}?" for t in titles][:3]
    assert events[-1].name == "done"
    off = [e async for e in make_pipeline(engine, None).run(AnswerRequest(
        query="q?", related=False))]
    assert next(e for e in off if e.name == "related").questions == []


async def test_related_starts_after_the_first_sentence_and_overlaps_the_answer() -> None:
    class Recording(ScriptedEngine):
        """Notes how many answer chunks were out when the related request came in."""
        def __init__(self) -> None:
            super().__init__(["Paris is the capital.", " It is", " large", "."] + [" x"] * 20,
                             delay_s=0.01)
            self.sent, self.related_at = 0, None

        async def generate(self, request):  # type: ignore[no-untyped-def]
            if request.sampling.json_schema is not None:
                self.related_at = self.sent
            async for chunk in super().generate(request):
                if request.sampling.json_schema is None:
                    self.sent += 1
                yield chunk

    engine = Recording()
    events = [e async for e in make_pipeline(engine, None).run(AnswerRequest(query="Paris?"))]
    assert engine.related_at is not None and 1 <= engine.related_at < 24
    assert len(next(e for e in events if e.name == "related").questions) == 3


async def test_related_failure_after_an_answer_error_is_retrieved(caplog) -> None:  # type: ignore[no-untyped-def]
    import gc

    from serving.errors import ServingError

    class FailsMidway(ScriptedEngine):
        async def generate(self, request):  # type: ignore[no-untyped-def]
            if request.sampling.json_schema is not None:
                raise RuntimeError("related broke")
                yield  # pragma: no cover
            async for chunk in super().generate(request):
                yield chunk
            await asyncio.sleep(0.05)
            raise ServingError("engine died")

    engine = FailsMidway(["Paris is the capital.", " More."])
    events = [e async for e in make_pipeline(engine, None).run(AnswerRequest(query="Paris?"))]
    assert events[-1].name == "error" and events[-1].code == "model_error"
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text


async def test_search_failure_is_an_error_event() -> None:
    from retrieval.providers import FallbackSearch, LocalProvider

    async def broken(query: str, k: int) -> list:
        raise RuntimeError("index gone")

    pipeline = make_pipeline(ScriptedEngine(), None)
    pipeline.chains = {"local": FallbackSearch([LocalProvider(broken)])}
    events = [e async for e in pipeline.run(AnswerRequest(query="q"))]
    assert [e.name for e in events] == ["search", "error"]
    assert events[-1].code == "search_failed"


def test_sentence_splitter_and_citations() -> None:
    splitter = SentenceSplitter()
    out = splitter.feed("One is here.[citation:1] Two")
    out += splitter.feed(" follows! [citation:2]\nThree")
    assert out == ["One is here.[citation:1] ", "Two follows! [citation:2]\n"]
    assert splitter.flush() == "Three"
    assert normalize_citations("a [[citation:2]] b [citation: 3]") == \
        "a [citation:2] b [citation:3]"
    assert citations("x[citation:1][citation:12]") == [1, 12]
    assert rewrite_query("When?", []) == "When?"
    assert rewrite_query("When?", [("Eiffel Tower?", "A tower.")]) == "Eiffel Tower? When?"


def test_the_splitter_does_not_end_a_sentence_at_an_initial_or_abbreviation() -> None:
    """"The first president ... was John F." and "Kennedy ..." were two sentences: the
    first was checked, cited and shown on its own."""
    splitter = SentenceSplitter()
    out = splitter.feed("It was John F. Kennedy in 1961. Mr. Smith met Dr. Jones on St. "
                        "Mark's Square. It is No. 5 on the list. Next")
    assert out == ["It was John F. Kennedy in 1961. ",
                   "Mr. Smith met Dr. Jones on St. Mark's Square. ",
                   "It is No. 5 on the list. "]


def test_store_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    events = [{"event": "delta", "data": {"text": "hi"}}]
    store.save_answer(AnswerRecord("a1", "t1", "c1", "q1", "q1", "hi", events))
    store.save_answer(AnswerRecord("a2", "t1", "c1", "q2", "q1 q2", "ho", events))
    assert store.get_answer("a1").events == events  # type: ignore[union-attr]
    assert [r.id for r in store.thread("t1") or []] == ["a1", "a2"]
    assert store.thread("nope") is None
    assert store.history("c1")[0]["answers"] == 2 and store.history("other") == []
    store.save_lepton("u", "body")
    assert store.get_lepton("u") == "body" and store.get_lepton("v") is None


def _checked(sentence: str, n_sources: int) -> str:
    """What the grounder does to a sentence's text: clean its citations and cite an
    uncited sentence before its trailing whitespace."""
    text = clean_citations(sentence, n_sources)
    if not citations(text):
        body = text.rstrip()
        text = f"{body}[citation:1]{text[len(body):]}"
    return text


def _stream(pieces: list[str], n_sources: int) -> tuple[list[str], list[str]]:
    """Emitted deltas and the sentences, the way the pipeline drives CitedStream."""
    cited, out, sentences = CitedStream(n_sources), [], []
    for piece in pieces:
        for sentence in cited.feed(piece):
            sentences.append(sentence)
            out.append(cited.complete(_checked(sentence, n_sources)))
        out.append(cited.progress())
    if (last := cited.flush()).strip():
        sentences.append(last)
        out.append(cited.complete(_checked(last, n_sources)))
    return [o for o in out if o], sentences


def test_cited_stream_sends_text_at_once_and_ends_as_sentence_checks_say() -> None:
    raw = ("The tower [[citation:1]] is tall. It is in Paris [citation: 2] and Lyon "
           "[citation:9]. Bananas grow on the Moon. [Note] a [c.\nLyon. [citation:9] "
           "Next [citation:9] [citation:8] one. Done [citation:3")
    whole = "".join(ANSWER) + " " + raw
    expected = "".join(_checked(s, 3) for s in SentenceSplitter().feed(whole)) + \
        _checked("Done [citation:3", 3)
    for pieces in (list(whole), ANSWER + [" " + raw], [whole],
                   [whole[i:i + 7] for i in range(0, len(whole), 7)]):
        out, _ = _stream(pieces, 3)
        assert "".join(out) == expected
        for delta in out:  # nothing that a check removes ever goes out
            assert "[citation:7]" not in delta and "[citation:9]" not in delta
            assert "[[" not in delta and "citation: " not in delta
    # streaming: one character at a time, text goes out before the first sentence ends
    out, sentences = _stream(list(whole), 3)
    assert len(out) > 3 * len(sentences)
    assert "".join(out).startswith("The Eiffel Tower was designed")
    first_sentence_end = "".join(out).index("[citation:1]")
    assert len(out[0]) < first_sentence_end


def test_cited_stream_matches_sentence_checks_on_random_text() -> None:
    """Random mixes of words, citation markers (valid, invalid, malformed) and sentence
    ends, cut into random chunks: what streams out is always what the checks produce."""
    import random

    rng = random.Random(7)
    parts = ["Foo", " bar", ".", " ", "  ", "\n", "[citation:1]", "[citation:9]",
             "[[citation:2]]", "[citation: 3]", "[", "[c", "]", "!", " Baz", "?", "x"]
    for _ in range(500):
        whole = "".join(rng.choice(parts) for _ in range(rng.randint(1, 25)))
        cuts = sorted(rng.sample(range(1, len(whole)), min(len(whole) - 1,
                                                          rng.randint(0, 8))))
        pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)],
                                             strict=True)]
        out, sentences = _stream(pieces, 3)
        assert "".join(out) == "".join(_checked(s, 3) for s in sentences), whole


async def test_stage_events_announce_reading_and_ranking_and_are_not_stored(
        tmp_path: Path) -> None:
    from retrieval.providers import FallbackSearch, LocalProvider
    from retrieval.types import Document
    from tests.app.support import search_fn

    class Reader:  # the reader's interface; real page reads are tested in tests/retrieval
        async def read(self, results):  # type: ignore[no-untyped-def]
            return [Document(result=r, text=r.snippet, title=r.title, status="ok")
                    for r in results]

    store = Store(tmp_path / "s.sqlite")
    pipeline = make_pipeline(ScriptedEngine(), store)
    pipeline.chains = {"local": FallbackSearch([LocalProvider(search_fn(RESULTS),
                                                              name="web")])}
    pipeline.reader = Reader()  # type: ignore[assignment]
    request = AnswerRequest(query="Who designed the Eiffel Tower?")
    events = [e async for e in pipeline.run(request)]
    names = [e.name for e in events]
    assert names[:4] == ["search", "stage", "stage", "sources"]
    assert [(e.stage, e.detail) for e in events[1:3]] == [("read", "3 pages"),
                                                           ("rank", "3 documents")]
    stored = store.get_answer(request.search_id)
    assert stored is not None and "stage" not in [e["event"] for e in stored.events]
