"""The lead (search_app/lead.py): the answer opens with the sources' own words.

The chooser runs on the real MiniLM over Wikipedia-style passages; the pipeline tests
use the scripted engine and check what every face then carries: the quote event, the
block quote that opens the text, and the three truthful ways to abstain.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from retrieval.types import Passage
from search_app.events import DeltaEvent, DoneEvent, QuoteEvent, SourcesEvent, SupportEvent
from search_app.grounding import is_decline, leans_on_previous, repeats
from search_app.lead import LeadChooser, Quote, answer_type, split_sentences
from search_app.pipeline import AnswerRequest, PipelineOptions
from search_app.prompts import ABSTAIN_TEXT, DECLINED_TEXT, UNVERIFIED_TEXT
from tests.app.support import ScriptedEngine, make_app, make_pipeline, parse_lepton, parse_sse
from tests.support.retrieval_fixtures import CountingModel, minilm

AUSTEN = ("Pride and Prejudice is a novel by English author Jane Austen. Written when "
          "she was aged 20–21, it was her third novel scribed and became the second to see "
          "print when it was published in 1813. A novel of manners, it follows the "
          "character development of Elizabeth Bennet, the protagonist of the book.")
MAHLER = ("The Symphony No. 2 by Gustav Mahler, known as the Resurrection Symphony, was "
          "written between 1888 and 1894. It was first performed in 1895 in Berlin.")
PACIFIC = ("The Pacific Ocean is the largest and deepest of Earth's five oceanic "
           "divisions. It extends from the Arctic Ocean in the north to the Southern Ocean "
           "in the south.")
MARS = ("Mars is the fourth planet from the Sun. It is often called the Red Planet because "
        "of the iron oxide on its surface. Mars has two small moons, Phobos and Deimos.")


def _passages(*texts: tuple[str, str]) -> list[Passage]:
    return [Passage(text=t, url=f"https://en.wikipedia.org/wiki/{title}",
                    title=title.replace("_", " "), source_id=n, position=0)
            for n, (title, t) in enumerate(texts, 1)]


@pytest.fixture(scope="module")
def chooser() -> LeadChooser:
    return LeadChooser(minilm())


def test_sentences_are_cut_by_a_splitter_that_knows_abbreviations() -> None:
    assert split_sentences(MAHLER) == (
        "The Symphony No. 2 by Gustav Mahler, known as the Resurrection Symphony, was "
        "written between 1888 and 1894.", "It was first performed in 1895 in Berlin.")
    assert split_sentences("Dr. Smith met Mr. Jones in the U.S. in 1950. Then he left.") \
        == ("Dr. Smith met Mr. Jones in the U.S. in 1950.", "Then he left.")


@pytest.mark.parametrize(("question", "kind"), [
    ("Who wrote Pride and Prejudice?", "name"),
    ("When was the Eiffel Tower built?", "date"),
    ("In what year did the Titanic sink?", "date"),
    ("How many moons does Mars have?", "number"),
    ("Where was Mozart born?", "place"),
    ("What is bronze made of?", None),
    ("Which planet is known as the Red Planet?", None),
])
def test_the_question_says_what_kind_of_word_answers_it(question: str,
                                                        kind: str | None) -> None:
    assert answer_type(question) == kind


async def test_the_quote_is_the_sentence_that_answers(chooser: LeadChooser) -> None:
    passages = _passages(("Mars", MARS), ("Pride_and_Prejudice", AUSTEN),
                         ("Pacific_Ocean", PACIFIC))
    quote = await chooser.choose("Who wrote Pride and Prejudice?", passages)
    assert quote is not None and quote.source == 2
    assert quote.text == "Pride and Prejudice is a novel by English author Jane Austen."
    moons = await chooser.choose("How many moons does Mars have?", passages)
    assert moons is not None and moons.text == "Mars has two small moons, Phobos and Deimos."
    ocean = await chooser.choose("What is the largest ocean?", passages)
    assert ocean is not None and ocean.source == 3 and "largest and deepest" in ocean.text


async def test_a_quote_that_opens_with_a_pronoun_brings_its_referent(
        chooser: LeadChooser) -> None:
    quote = await chooser.choose("Who designed the Eiffel Tower?",
                                 _passages(("Mars", MARS), ("Eiffel_Tower", LEAD)))
    assert quote is not None and quote.source == 2
    assert quote.text == LEAD  # "It was designed..." with the sentence that names "It"


async def test_no_quote_when_no_sentence_is_close(chooser: LeadChooser) -> None:
    assert await chooser.choose("How do I fix npm ERR! code ERESOLVE?",
                                _passages(("Mars", MARS), ("Pacific_Ocean", PACIFIC))) is None
    assert await chooser.choose("Who wrote it?", []) is None


def test_declines_pronouns_and_repeats_are_recognised() -> None:
    assert is_decline("The sources do not mention who designed the tower.")
    assert is_decline("There is no information about this in the provided context.")
    assert is_decline("I don't know.")
    assert not is_decline("Bronze is an alloy of copper and tin.")
    assert not is_decline("He did not marry.")
    assert leans_on_previous("He became the first American to walk on the Moon.")
    assert leans_on_previous("It was first performed in 1895.")
    assert not leans_on_previous("Neil Armstrong was the first person on the Moon.")
    assert repeats("Jane Austen wrote Pride and Prejudice[citation:1].", AUSTEN)
    assert not repeats("Austen died in Winchester in 1817.", AUSTEN)


# --- the pipeline, with the scripted engine ----------------------------------------------

QUESTION = "Who designed the Eiffel Tower?"
LEAD = ("The Eiffel Tower is a lattice tower in Paris. It was designed by the company of "
        "the engineer Gustave Eiffel and built from 1887 to 1889.")


class FixedLead(LeadChooser):
    """The chooser's double: always this quote (or none); which sentence the real one
    picks is tested above, on MiniLM."""

    def __init__(self, quote: Quote | None = Quote(LEAD, 1, 0.9)) -> None:
        super().__init__(CountingModel())
        self.quote = quote

    async def choose(self, question: str, passages: Sequence[Passage]) -> Quote | None:
        """The quote, cited to the best passage it is given (numbered as the model
        sees them: 1 in a quick answer, the report's numbers in a research section)."""
        assert passages
        return self.quote and Quote(self.quote.text, passages[0].source_id, 0.9)


async def _events(tokens: list[str], *, lead: bool | None = None, quoted: bool = True,
                  grounding: str | None = None, relevance: float = 0.05) -> list:
    pipeline = make_pipeline(ScriptedEngine(tokens), None, relevance=relevance)
    pipeline.lead = FixedLead() if quoted else FixedLead(None)
    return [e async for e in pipeline.run(AnswerRequest(
        query=QUESTION, related=False, lead=lead,
        grounding=grounding))]  # type: ignore[arg-type]


def _text(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, DeltaEvent))


def _one(events: list, kind: type):  # type: ignore[no-untyped-def]
    return next(e for e in events if isinstance(e, kind))


async def test_the_answer_opens_with_the_quote_then_the_model() -> None:
    events = await _events(["Paris is the capital and largest city of France[citation:2]."])
    names = [e.name for e in events]
    assert names.index("sources") < names.index("quote") < names.index("delta")
    quote = _one(events, QuoteEvent)
    assert quote.source == 1 and quote.text == LEAD  # "It was designed..." + its referent
    text = _text(events)
    assert text.startswith(f"> {LEAD} [citation:1]\n\n")
    assert text.endswith("Paris is the capital and largest city of France[citation:2].")
    assert _one(events, DoneEvent).finish_reason == "stop"


async def test_a_model_sentence_that_repeats_the_quote_is_left_out() -> None:
    events = await _events(["The Eiffel Tower was designed by the company of Gustave "
                            "Eiffel[citation:1]."])
    text = _text(events)
    assert text == f"> {LEAD} [citation:1]\n\n"  # the quote says it already
    support = _one(events, SupportEvent)
    assert support.sentences[0].repeats_quote and support.sentences[0].supported
    assert support.withheld == 0
    assert _one(events, DoneEvent).finish_reason == "stop"  # the model agreed


async def test_nothing_verified_shows_the_quote_and_says_so_never_the_gate_text() -> None:
    for lead in (True, False):  # with the lead off, the quote is shown when needed
        events = await _events(["Bananas grow on the Moon."], lead=lead)
        text = _text(events)
        assert ABSTAIN_TEXT not in text
        assert text == f"> {LEAD} [citation:1]\n\n{UNVERIFIED_TEXT[0]}"
        assert _one(events, DoneEvent).finish_reason == "unverified"
        assert _one(events, SupportEvent).sentences[0].reason == "unsupported"
    # no sentence close enough to quote: the note alone, still not "not covered"
    events = await _events(["Bananas grow on the Moon."], quoted=False)
    assert _text(events) == UNVERIFIED_TEXT[1]
    assert not any(isinstance(e, QuoteEvent) for e in events)


async def test_a_model_that_declines_is_not_shown_denying_the_sources() -> None:
    events = await _events(["The sources do not say who designed the tower."])
    assert _text(events) == f"> {LEAD} [citation:1]\n\n{DECLINED_TEXT[0]}"
    assert _one(events, DoneEvent).finish_reason == "declined"
    assert _one(events, SupportEvent).sentences[0].reason == "declined"
    # mark streams every sentence as written, and marks a denial as not supported
    marked = await _events(["The sources do not say who designed the tower."],
                           grounding="mark")
    record = _one(marked, SupportEvent).sentences[0]
    assert record.reason == "declined" and not record.supported and not record.withheld


async def test_the_gate_is_the_only_not_close_enough_answer() -> None:
    events = await _events(["Anything."], relevance=0.99)
    assert _text(events) == ABSTAIN_TEXT
    assert _one(events, DoneEvent).finish_reason == "no_relevant_sources"
    assert not any(isinstance(e, QuoteEvent) for e in events)
    assert _one(events, SourcesEvent).relevant is False


async def test_a_sentence_leaning_on_a_withheld_one_is_withheld_too() -> None:
    tokens = ["Bananas grow on the Moon.", " It was designed by the company of the "
              "engineer Gustave Eiffel[citation:1].", " Paris is the capital and largest "
              "city of France[citation:2]."]
    events = await _events(tokens, lead=False)
    text = _text(events)
    assert text == "Paris is the capital and largest city of France[citation:2]."
    reasons = [s.reason for s in _one(events, SupportEvent).sentences]
    assert reasons == ["unsupported", "leans_on_withheld", None]
    # after a shown sentence, the same pronoun is fine
    shown = await _events(["The Eiffel Tower is a lattice tower in Paris[citation:1].",
                           " It was designed by the company of the engineer Gustave "
                           "Eiffel[citation:1]."], lead=False)
    assert "It was designed" in _text(shown)


async def test_every_face_carries_the_quote(tmp_path: Path) -> None:
    engine = ScriptedEngine(["Paris is the capital and largest city of France[citation:2]."])
    app, _ = make_app(tmp_path, engine)
    app.state.answer.pipeline.lead = FixedLead()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as http:
        sse = parse_sse((await http.post("/api/search", json={"query": QUESTION})).text)
        quotes = [d for n, d in sse if n == "quote"]
        assert quotes and quotes[0]["text"] == LEAD and quotes[0]["source"] == 1
        off = parse_sse((await http.post("/api/search", json={"query": QUESTION,
                                                              "lead": False})).text)
        assert not [d for n, d in off if n == "quote"]
        chat = (await http.post("/v1/chat/completions", json={
            "model": "search-app", "messages": [{"role": "user", "content": QUESTION}]}
        )).json()
        assert chat["choices"][0]["message"]["content"].startswith(f"> {LEAD} [1]\n\n")
        assert chat["quote"] == {"text": LEAD, "source": 1}
        bad = await http.post("/v1/chat/completions", json={
            "model": "search-app", "lead": "yes",
            "messages": [{"role": "user", "content": QUESTION}]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "lead"
        _, answer, _ = parse_lepton((await http.post("/query", json={
            "query": QUESTION, "search_uuid": "lead-1"})).text)
        assert answer.startswith(f"> {LEAD} [citation:1]")


def test_the_lead_is_a_setting_and_on_by_default() -> None:
    from search_app.config import Settings

    assert Settings().lead is True and Settings().pipeline_options().lead is True
    assert Settings(lead=False).pipeline_options().lead is False
    assert PipelineOptions().lead is True


async def test_research_sections_open_with_their_quote_and_never_say_not_covered() -> None:
    from tests.app.test_research import Planner

    pipeline = make_pipeline(Planner(tokens=["Bananas grow on the Moon."]), None)
    pipeline.lead = FixedLead()
    events = [e async for e in pipeline.run(AnswerRequest(
        query="Who designed the Eiffel Tower and what is the capital of France?",
        mode="research", related=False))]
    text = _text(events)
    sections = [e for e in events if isinstance(e, QuoteEvent)]
    assert len(sections) == text.count("## ") == 3  # two steps and the conclusion
    assert text.count(UNVERIFIED_TEXT[0]) == 3 and "Bananas" not in text
    assert ABSTAIN_TEXT not in text
    assert _one(events, DoneEvent).finish_reason == "unverified"


async def test_mark_keeps_a_repeat_whole_it_has_streamed() -> None:
    repeat = "The Eiffel Tower was designed by the company of Gustave Eiffel[citation:1]."
    events = await _events([repeat, " Paris is the capital of France[citation:2]."],
                           grounding="mark")
    text = _text(events)
    assert f"{repeat} Paris is the capital" in text  # nothing cut out of what streamed
    assert not any(s.repeats_quote for s in _one(events, SupportEvent).sentences)
