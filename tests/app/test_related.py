"""Related questions: the filter and the fallback, on outputs SmolLM2 really wrote."""

from __future__ import annotations

import json

from search_app import prompts
from search_app.related import MAX_RELATED, parse_candidates, pick_related

CONTEXT = ("[[citation:1]] Mona Lisa: The Mona Lisa is a half-length portrait painting by "
           "Italian artist Leonardo da Vinci. [[citation:2]] Louvre: The Louvre is the "
           "world's most-visited museum, in Paris.")
TITLES = ["Mona Lisa", "Louvre", "Leonardo da Vinci"]


def test_repeats_of_the_question_are_dropped_and_titles_fill_in() -> None:
    written = ["Who painted the Mona Lisa?", "Who painted the Mona Lisa?",
               "Who painted a Mona Lisa?", "What inspired the painting of the Mona Lisa?",
               "Who painted the Mona Lisa?"]
    got = pick_related(written, "Who painted the Mona Lisa?", CONTEXT, TITLES)
    # "What is known about Mona Lisa?" is too close to the question itself.
    assert got == ["What inspired the painting of the Mona Lisa?",
                   "What is known about Louvre?", "What is known about Leonardo da Vinci?"]


def test_junk_example_copies_and_near_duplicates_are_dropped() -> None:
    written = ["How do I find it?", "What is a volcano?", "Where is the Louvre museum?",
               "Where is the Louvre museum located?", "Why is the Mona Lisa famous?"]
    got = pick_related(written, "Who painted the Mona Lisa?", CONTEXT, [])
    assert got == ["Where is the Louvre museum?", "Why is the Mona Lisa famous?"]


def test_never_more_than_three_and_nothing_without_sources() -> None:
    many = [f"Why is the Louvre museum number {i} famous today?" for i in range(9)]
    assert len(pick_related(many, "q?", CONTEXT, TITLES)) <= MAX_RELATED
    assert pick_related([], "Who painted the Mona Lisa?", "", []) == []


def test_candidates_from_json_and_from_a_cut_off_output() -> None:
    assert parse_candidates('{"questions": ["Why is it famous?", 3]}') == ["Why is it famous?"]
    cut = '{"questions": ["Where is the Louvre?", "Why is the Mona Lisa fam'
    assert parse_candidates(cut) == ["questions", "Where is the Louvre?"]
    assert pick_related(parse_candidates(cut), "Who painted the Mona Lisa?", CONTEXT,
                        []) == ["Where is the Louvre?"]  # "questions" is no question


def test_the_schema_asks_for_questions() -> None:
    schema = prompts.RELATED_SCHEMA["properties"]["questions"]  # type: ignore[index]
    assert schema["minItems"] == schema["maxItems"] == prompts.RELATED_CANDIDATES
    assert schema["items"]["pattern"].endswith("[?]$")
    assert json.loads(json.dumps(prompts.RELATED_SCHEMA)) == prompts.RELATED_SCHEMA
