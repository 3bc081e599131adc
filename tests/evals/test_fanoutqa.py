"""FanOutQA in the harness: the dataset mapping, loose accuracy, percent-encoded URLs,
index coverage, and research mode reaching the app. No model, no download."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from evals import metrics as m
from evals.coverage import coverage, index_urls, most_covered
from evals.datasets import Question, fanoutqa_from_json, flatten_answer, load_dataset
from evals.runner import QuestionResult, Scorer, abstained, ask_one, read_config
from search_app.cli import cli
from search_app.prompts import ABSTAIN_TEXT, RESEARCH_GAP_TEXT

WIKI = "https://en.wikipedia.org/wiki/"


def _sub(qid: str, question: str, answer: object, title: str | None,
         decomposition: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    evidence = None if title is None else {
        "pageid": 1, "revid": 2, "title": title, "url": WIKI + title}
    return {"id": qid, "question": question, "decomposition": decomposition or [],
            "answer": answer, "depends_on": [], "evidence": evidence}


# The shape of fanout-final-dev.json: nested decomposition, evidence only on leaves.
FAKE_DEV = [
    {"id": "q1", "question": "What is the batting hand of the first two 1998 picks?",
     "decomposition": [
         _sub("s1", "Who were the first 2 picks?", ["Pat Burrell", "Mark Mulder"],
              "1998_Major_League_Baseball_draft"),
         _sub("s2", "Batting hand of Pat Burrell?", "Right", "Pat_Burrell"),
         _sub("s3", "Batting hand of Mark Mulder?", "Left", None, [
             _sub("s4", "Mulder's page?", "Left", "Mark_Mulder"),
             _sub("s5", "Again?", "Left", "Pat_Burrell")])],  # a repeat: listed once
     "answer": {"Pat Burrell": "Right", "Mark Mulder": "Left"},
     "categories": ["Sports"]},
    {"id": "q2", "question": "How many Pokémon films were released?", "decomposition": [
        _sub("s6", "List?", 23, "List_of_Pok%C3%A9mon_films")],
     "answer": 23, "categories": []},
    {"id": "q3", "question": "Is it true?", "decomposition": [], "answer": True,
     "categories": []},
    {"id": "q4", "question": "Which two?", "decomposition": [], "answer": ["A", 2.5],
     "categories": []},
]


def test_fanoutqa_questions_are_mapped_from_the_json() -> None:
    q1, q2, q3, q4 = fanoutqa_from_json(FAKE_DEV)
    assert q1.id == "fanoutqa-q1" and q1.question.startswith("What is the batting hand")
    # a dict answer: its keys, then its values (FanOutQA's answer_in_text counts both)
    assert q1.answers == ["Pat Burrell", "Mark Mulder", "Right", "Left"]
    assert q1.gold_urls == [WIKI + "1998_Major_League_Baseball_draft", WIKI + "Pat_Burrell",
                            WIKI + "Mark_Mulder"]
    assert q1.tags == ["fanoutqa", "Sports"] and not q1.unanswerable
    assert q2.answers == ["23"] and q2.gold_urls == [WIKI + "List_of_Pok%C3%A9mon_films"]
    assert q3.answers == ["yes"] and q3.gold_urls == [] and q3.tags == ["fanoutqa"]
    assert q4.answers == ["A", "2.5"]
    # dict keys the question names are left out: repeating the question earns nothing
    named = {**FAKE_DEV[0], "question": "The land mass of China and of France?",
             "answer": {"China": "9,596,961 km2", "France": "643,801 km2", "Peru": "x"}}
    assert fanoutqa_from_json([named])[0].answers == ["Peru", "9,596,961 km2",
                                                      "643,801 km2", "x"]
    assert flatten_answer({"x": [1, False]}) == ["x", "1", "no"]


def test_the_named_set_reads_the_cached_wheel(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "fanoutqa-1.1.1-py3-none-any.whl", "w") as wheel:
        wheel.writestr("fanoutqa/data/fanout-final-dev.json", json.dumps(FAKE_DEV))
    questions = load_dataset("fanoutqa", tmp_path)  # no download: the wheel is cached
    assert [q.id for q in questions] == ["fanoutqa-q1", "fanoutqa-q2", "fanoutqa-q3",
                                         "fanoutqa-q4"]


def test_answer_recall_is_fanoutqa_loose_accuracy() -> None:
    gold = ["Pat Burrell", "Mark Mulder", "Right", "Left"]
    assert m.answer_recall("Pat Burrell bats right.[citation:2]", gold) == 0.5
    assert m.answer_recall("Pat Burrell (right) and Mark Mulder (left).", gold) == 1.0
    assert m.answer_recall("Leftover Rightmost", gold) == 0.0  # whole tokens only
    # repeats count: each is one part of the answer
    assert m.answer_recall("Left.", ["Left", "Left", "Right"]) == pytest.approx(2 / 3)
    assert m.answer_recall("The 1,024 units", ["1024"]) == 1.0  # commas in numbers
    assert m.answer_recall("x", []) is None and m.answer_recall("x", ["!"]) is None
    # one gold string: the same as answer_contains
    assert m.answer_recall("It is 30 days", ["30 days"]) == m.answer_contains(
        "It is 30 days", ["30 days"]) == 1.0


def test_urls_match_across_percent_encoding() -> None:
    encoded = WIKI + "List_of_Pok%C3%A9mon_films"
    plain = WIKI + "List_of_Pokémon_films"
    assert m.normalize_url(encoded, anchor=False) == m.normalize_url(plain, anchor=False) \
        == "en.wikipedia.org/wiki/List_of_Pokémon_films"
    assert m.normalize_url(WIKI + "Star_Wars:_Episode_I_%E2%80%93_The_Phantom_Menace",
                           anchor=False).endswith("Episode_I_–_The_Phantom_Menace")
    assert m.normalize_url(WIKI + "C%2B%2B#Hist%C3%B3ria", anchor=True) == \
        "en.wikipedia.org/wiki/C++#História"
    assert m.recall_at_k([plain, WIKI + "Pat_Burrell"], [encoded], 1) == 1.0
    assert m.mrr([WIKI + "X", plain], [encoded]) == 0.5


def test_coverage_of_the_gold_articles_in_an_index(tmp_path: Path) -> None:
    db = tmp_path / "index.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE sources (key TEXT PRIMARY KEY, kind TEXT, url TEXT)")
        conn.executemany("INSERT INTO sources VALUES (?, 'corpus', ?)", [
            ("a", WIKI + "Pat_Burrell"), ("b", WIKI + "List_of_Pokémon_films"),
            ("c", None)])
    questions = fanoutqa_from_json(FAKE_DEV)
    cov = coverage(questions, index_urls(tmp_path))  # the folder or the file
    assert cov.per_question == [("fanoutqa-q1", 1, 3), ("fanoutqa-q2", 1, 1),
                                ("fanoutqa-q3", 0, 0), ("fanoutqa-q4", 0, 0)]
    assert (cov.articles, cov.articles_covered) == (4, 2)
    assert cov.questions_all_covered == 1 and cov.questions_any_covered == 2
    assert [q.id for q in most_covered(questions, cov)] == ["fanoutqa-q2", "fanoutqa-q1"]
    assert [q.id for q in most_covered(questions, cov, min_share=0.5)] == ["fanoutqa-q2"]
    assert "2 of 4 distinct" in cov.summary()


def test_a_research_report_abstains_only_when_every_section_does() -> None:
    gap = f"## Who?\n\n{RESEARCH_GAP_TEXT}\n\n## When?\n\n"
    assert not abstained(gap + "In 1998.[citation:1]", "stop")
    assert abstained(gap + RESEARCH_GAP_TEXT, "stop")
    assert abstained(gap + "The sources do not mention it.", "stop")
    assert abstained(ABSTAIN_TEXT, "stop") and abstained("", "no_relevant_sources")
    assert abstained("The sources do not mention it.", "stop")  # quick answers as before
    q = Question(id="x", question="Who and when?", answers=["Pat Burrell", "1998"],
                 gold_urls=[WIKI + "Pat_Burrell"])
    r = QuestionResult(id="x", question=q.question, finish_reason="stop",
                       answer=gap + "Pat Burrell, in 1998.[citation:1]",
                       sources=[{"number": 1, "url": WIKI + "Pat_Burrell"}])
    Scorer(None).score(q, r)
    assert r.metrics["answer_recall"] == 1.0 and r.metrics["false_abstention"] == 0.0
    # a research report may return more than 8 sources: recall@all_page counts them all
    r.sources = [{"number": n, "url": f"{WIKI}P{n}"} for n in range(1, 10)] + [
        {"number": 10, "url": WIKI + "Pat_Burrell"}]
    Scorer(None).score(q, r)
    assert r.metrics["recall@8_page"] == 0.0 and r.metrics["recall@all_page"] == 1.0


def _sse(mode: str) -> str:
    from search_app.events import (
        DeltaEvent,
        DoneEvent,
        PlanEvent,
        SearchEvent,
        Source,
        SourcesEvent,
        Usage,
    )

    events = [SearchEvent(search_id="s", thread_id="t", query="q", search_query="q",
                          mode=mode)]
    if mode == "research":
        events.append(PlanEvent(sub_questions=["Who?", "When?"]))
    events += [SourcesEvent(sources=[Source(number=1, title="Pat Burrell",
                                            url=WIKI + "Pat_Burrell", site="wikipedia",
                                            snippet="...")]),
               DeltaEvent(text="## Who?\n\nPat Burrell.[citation:1]"),
               DoneEvent(finish_reason="stop", usage=Usage())]
    return "".join(f"event: {e.name}\ndata: {e.model_dump_json()}\n\n" for e in events)


def _app(bodies: list[dict[str, Any]]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        return httpx.Response(200, text=_sse(body.get("mode", "quick")),
                              headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


def test_mode_reaches_the_request() -> None:
    from search_app.client import AsyncSearchClient

    bodies: list[dict[str, Any]] = []
    q = Question(id="x", question="Who?", answers=["Pat Burrell"])

    async def ask(mode: str) -> QuestionResult:
        async with AsyncSearchClient("http://app", transport=_app(bodies)) as client:
            return await ask_one(client, q, provider=None, sources=None, related=False,
                                 mode=mode)

    research = asyncio.run(ask("research"))
    assert bodies[-1]["mode"] == "research"
    assert research.mode == "research" and research.plan == ["Who?", "When?"]
    quick = asyncio.run(ask("quick"))
    assert "mode" not in bodies[-1]  # the app's default: apps without modes still work
    assert quick.mode == "quick" and quick.plan == []


def test_eval_run_mode_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``eval run --mode research`` asks in research mode, records it in run.json and
    the report, and ``compare`` names both modes."""
    import evals.cli
    import evals.runner

    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": "x", "question": "Who?", "answers": ["Pat Burrell"],
                                "gold_urls": [WIKI + "Pat_Burrell"]}) + "\n")
    bodies: list[dict[str, Any]] = []
    real = evals.runner.answer_questions

    async def answer_questions(*args: Any, **kwargs: Any) -> int:
        from search_app.client import AsyncSearchClient

        original = AsyncSearchClient.__init__

        def init(self: Any, *a: Any, **k: Any) -> None:
            original(self, *a, **{**k, "transport": _app(bodies)})

        monkeypatch.setattr(AsyncSearchClient, "__init__", init)
        return await real(*args, **kwargs)

    monkeypatch.setattr(evals.runner, "answer_questions", answer_questions)
    monkeypatch.setattr(evals.runner, "served_models", lambda url, key=None: ["m"])
    monkeypatch.setattr(evals.cli, "_reachable", lambda url, what: None)
    root = ["--root", str(tmp_path), "--support", "none", "--no-progress",
            "--base-url", "http://app", "--dataset", str(data)]
    runner = CliRunner()
    out = runner.invoke(cli, ["eval", "run", "--mode", "research", "--run-id", "r", *root])
    assert out.exit_code == 0, out.output
    assert bodies[-1]["mode"] == "research" and "- mode: research;" in out.output
    assert read_config(tmp_path / "runs" / "r").mode == "research"
    out = runner.invoke(cli, ["eval", "run", "--run-id", "q", *root])
    assert out.exit_code == 0 and "mode" not in bodies[-1] and "- mode: quick;" in out.output
    out = runner.invoke(cli, ["eval", "compare", "q", "r", "--root", str(tmp_path)])
    assert out.exit_code == 0 and "Modes: A quick, B research." in out.output
    assert "| answer_recall | 1.000 | 1.000 | +0.000 |" in out.output
    # rescore: the stored answers against changed gold answers, no app asked
    data.write_text(json.dumps({"id": "x", "question": "Who?",
                                "answers": ["Pat Burrell", "1998"]}) + "\n")
    asked = len(bodies)
    out = runner.invoke(cli, ["eval", "rescore", "r", "--support", "none",
                              "--root", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "| answer_recall | 0.500 | 1 |" in out.output and len(bodies) == asked
    line = json.loads((tmp_path / "runs" / "r" / "results.jsonl").read_text())
    assert line["mode"] == "research" and line["metrics"]["recall@8_page"] is None
    assert "| answer_recall | 0.500 | 1 |" in (tmp_path / "runs" / "r" / "report.md").read_text()


def test_report_headings_and_gap_lines_are_not_claims() -> None:
    from evals.runner import answer_sentences
    from search_app.prompts import RESEARCH_GAP_TEXT

    report = (f"## Who designed the tower?\n\nGustave Eiffel's firm did.[citation:1]\n\n"
              f"## Where is it?\n\n{RESEARCH_GAP_TEXT}\n\n## Conclusion\n\n"
              "It was designed by Eiffel's firm.[citation:1]")
    assert [c for _, c in answer_sentences(report)] == [[1], [1]]
