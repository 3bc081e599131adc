"""The grounding policy (strict | mark | off) through the pipeline and every face.

A scripted engine writes a known answer: two sentences the sources support and one they
do not ("Bananas grow on the Moon"). Strict must keep the unsupported one out of every
face's text and out of the stored answer, while listing it (withheld) in the support
event; mark sends everything and marks it; off checks nothing.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from search_app.events import DeltaEvent, DoneEvent, SupportEvent, TimingsEvent
from search_app.pipeline import AnswerRequest, PipelineOptions
from search_app.prompts import ABSTAIN_TEXT, UNVERIFIED_TEXT
from search_app.store import Store
from tests.app.support import ScriptedEngine, make_app, make_pipeline, parse_lepton, parse_sse

MOON = "Bananas grow on the Moon"
SUPPORTED = ["The Eiffel", " Tower was", " designed by", " the company of", " Gustave Eiffel",
             "[citation:1]."]


async def _events(engine: ScriptedEngine, *, grounding: str | None = None,
                  options: PipelineOptions | None = None, store: Store | None = None,
                  lead: bool = False) -> list:
    """The model's sentences under each policy; the lead quote (tests/app/test_lead.py)
    is off unless asked for, so the text is the model's alone."""
    pipeline = make_pipeline(engine, store, options=options)
    request = AnswerRequest(query="Who designed the Eiffel Tower?", related=False,
                            grounding=grounding, lead=lead)  # type: ignore[arg-type]
    return [e async for e in pipeline.run(request)]


def _text(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, DeltaEvent))


def _of(events: list, kind: type) -> object:
    return next(e for e in events if isinstance(e, kind))


async def test_strict_withholds_the_unsupported_sentence(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    events = await _events(ScriptedEngine(), store=store)  # strict is the default
    text = _text(events)
    assert "Gustave Eiffel[citation:1]" in text and MOON not in text
    support = _of(events, SupportEvent)
    assert support.policy == "strict" and support.withheld == 1
    withheld = [s for s in support.sentences if s.withheld]
    assert [s.sentence for s in withheld] == [f"{MOON}."] and not withheld[0].supported
    assert all(s.supported for s in support.sentences if not s.withheld)
    done = _of(events, DoneEvent)
    assert done.withheld == 1 and not done.stopped_unsupported
    stored = store.get_answer(events[0].search_id)
    assert stored is not None and MOON not in stored.answer and stored.answer == text
    # The reader can still see what was withheld, on request: it is in the stored record.
    assert stored.as_dict()["support"]["withheld"] == 1


async def test_mark_sends_everything_and_marks_it() -> None:
    events = await _events(ScriptedEngine(), grounding="mark")
    assert MOON in _text(events)
    support = _of(events, SupportEvent)
    assert support.policy == "mark" and support.withheld == 0
    assert not support.sentences[-1].supported and not support.sentences[-1].withheld


async def test_off_checks_nothing() -> None:
    events = await _events(ScriptedEngine(), grounding="off")
    assert MOON in _text(events)
    support = _of(events, SupportEvent)
    assert support.policy == "off" and support.sentences == []
    assert "[citation:7]" not in _text(events)  # invalid citations are still dropped


async def test_strict_stops_after_two_unsupported_sentences_in_a_row() -> None:
    tokens = [*SUPPORTED, f" {MOON}.", " Cheese flies over Mars.", " The Eiffel Tower",
              " is in Paris."] + [" Nonsense words here."] * 40
    engine = ScriptedEngine(tokens, delay_s=0.002)
    events = await _events(engine)
    done = _of(events, DoneEvent)
    assert done.stopped_unsupported and done.withheld == 2
    assert any(r.startswith("answer-") for r in engine.aborted)  # generation stopped
    assert engine.running == 0
    assert "Paris" not in _text(events)  # nothing after the stop
    assert any("unsupported" in f for f in _of(events, TimingsEvent).fallbacks)


async def test_strict_with_nothing_supported_says_so_truthfully() -> None:
    """The sources passed the gate: the app never says they do not cover the question;
    it shows the best quote and says the model's words could not be verified."""
    events = await _events(ScriptedEngine([f"{MOON}."]))
    text = _text(events)
    assert ABSTAIN_TEXT not in text and MOON not in text
    assert text.startswith("> ") and text.endswith(UNVERIFIED_TEXT[0])
    assert _of(events, DoneEvent).finish_reason == "unverified"
    assert _of(events, SupportEvent).withheld == 1
    sources = [e for e in events if e.name == "sources"][0].sources
    assert sources  # the sources are still shown


async def test_a_list_number_goes_out_with_its_item_or_not_at_all() -> None:
    """The splitter cuts "1. Claim." into "1." and "Claim.": the number is not a claim
    (it is not checked, not listed, does not count toward strict's stop; "10." once was
    withheld as a number the sources lack), it goes out with its item, and is dropped
    with a withheld item instead of dangling."""
    tokens = ["1.", " The Eiffel Tower was designed by the company of Gustave "
              "Eiffel[citation:1].", "\n\n", "2.", f" {MOON}.", "\n\n", "10.",
              " The Eiffel Tower was designed by the company of Gustave Eiffel.", "\n\n", "}"]
    events = await _events(ScriptedEngine(tokens))
    text = _text(events)
    assert "1. The Eiffel Tower" in text and "10. The Eiffel Tower" in text
    assert "2." not in text and MOON not in text and text.rstrip().endswith("}")
    support = _of(events, SupportEvent)
    listed = [s.sentence for s in support.sentences]
    assert not any(s in ("1.", "2.", "10.", "}") for s in listed), listed
    assert support.withheld == 1 and not _of(events, DoneEvent).stopped_unsupported
    # a number between two rejected claims does not reset the count: strict stops
    stop = ScriptedEngine([*SUPPORTED, f" {MOON}.", "\n\n", "3.", " Cheese flies over Mars.",
                           " The Eiffel Tower is in Paris."], delay_s=0.002)
    assert _of(await _events(stop), DoneEvent).stopped_unsupported
    marked = await _events(ScriptedEngine(tokens), grounding="mark")
    assert "2. " + MOON in _text(marked)
    assert "10." not in [s.sentence for s in _of(marked, SupportEvent).sentences]


async def test_every_face_leaves_withheld_sentences_out(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, ScriptedEngine())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        native = parse_sse((await client.post("/api/search", json={
            "query": "Who designed the Eiffel Tower?"})).text)
        assert MOON not in "".join(d["text"] for n, d in native if n == "delta")
        assert dict(native)["support"]["withheld"] == 1
        marked = parse_sse((await client.post("/api/search", json={
            "query": "Who designed the Eiffel Tower?", "grounding": "mark"})).text)
        assert MOON in "".join(d["text"] for n, d in marked if n == "delta")
        bad = await client.post("/api/search", json={"query": "q", "grounding": "loose"})
        assert bad.status_code == 400

        lepton = await client.post("/query", json={"query": "Who designed the Eiffel Tower?",
                                                    "search_uuid": "g1"})
        _, answer, _ = parse_lepton(lepton.text)
        assert "Gustave Eiffel" in answer and MOON not in answer

        oai = openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=client)
        reply = await oai.chat.completions.create(model="search-app", messages=[
            {"role": "user", "content": "Who designed the Eiffel Tower?"}])
        assert "Gustave Eiffel" in reply.choices[0].message.content
        assert MOON not in reply.choices[0].message.content


@pytest.mark.parametrize("policy", ["strict", "mark", "off"])
def test_policy_is_one_setting(policy: str, tmp_path: Path) -> None:
    from search_app.config import Settings

    settings = Settings(data_dir=tmp_path, grounding=policy)  # type: ignore[arg-type]
    assert settings.pipeline_options().grounding == policy
