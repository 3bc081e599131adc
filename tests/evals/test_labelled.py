"""The labelled set (issue 19): its shape, lead hit rate, truthful abstention in the
scoring, and the support pairs (extraction, scoring, the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from evals.datasets import load_dataset
from evals.pairs import Evidence, Pair, pairs_from_run, read_pairs, score_check, write_pairs
from evals.runner import QuestionResult, RunConfig, Scorer, abstained, lead_hit, write_config
from search_app.cli import cli
from search_app.prompts import ABSTAIN_TEXT, UNVERIFIED_TEXT

SHIPPED = Path(__file__).resolve().parents[2] / "evals" / "datasets"


def test_the_labelled_set_is_whole_and_consistent() -> None:
    wiki, git = load_dataset("labelled-wiki"), load_dataset("labelled-git")
    assert len(wiki) == 125 and len(git) == 50
    answerable = [q for q in wiki + git if not q.unanswerable]
    assert len({q.id for q in answerable}) == 145
    for q in answerable:  # every answer is in a gold sentence (the checker's rule)
        assert q.answers and q.gold_sentences and q.gold_urls, q.id
        assert any(a.lower() in s.lower() for a in q.answers for s in q.gold_sentences), q.id
    off = [q for q in wiki if q.unanswerable]
    assert len(off) == 15 and all(not q.gold_sentences for q in off)
    pairs = read_pairs(SHIPPED / "support_pairs.jsonl")
    labelled = [p for p in pairs if p.label]
    assert len(labelled) >= 300
    assert {p.label for p in labelled} == {"yes", "partial", "no"}


def test_lead_hit_needs_the_sentence_with_the_answer() -> None:
    gold = ["Angel Falls is a waterfall in Venezuela.",
            "It is the world's tallest uninterrupted waterfall, with a height of 979 metres."]
    answers = ["979"]
    assert lead_hit([{"text": " ".join(gold)}], gold, answers) == 1.0
    assert lead_hit([{"text": gold[0]}], gold, answers) == 0.0  # the referent alone
    assert lead_hit([{"text": "with a height of 979 metres"}], gold, answers) == 1.0
    assert lead_hit([{"text": "with a height of"}], gold, answers) == 0.0
    assert lead_hit([], gold, answers) == 0.0


def test_a_shown_quote_is_an_answer_not_an_abstention() -> None:
    quote = "> Pride and Prejudice is a novel by Jane Austen. [citation:1]\n\n"
    assert not abstained(quote + UNVERIFIED_TEXT[0], "unverified")
    assert abstained(UNVERIFIED_TEXT[1], "unverified")
    assert abstained(ABSTAIN_TEXT, "no_relevant_sources")
    # a quoted page that says "does not contain" is not the model refusing
    page = "> The index does not contain the file. [citation:1]\n\n"
    assert not abstained(page + "Run git add first.", "stop")
    assert abstained("The sources do not mention it.", "stop")


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "r1"
    write_config(run, RunConfig(run_id="r1", dataset="labelled-wiki", questions=1,
                                base_url="http://x", models=["search-app", "tiny"]))
    result = QuestionResult(
        id="wiki-a-001", question="Who wrote Nineteen Eighty-Four?", answer="x",
        finish_reason="stop",
        sources=[{"number": 1, "title": "Nineteen Eighty-Four", "url": "u1",
                  "passage": "Nineteen Eighty-Four is a novel by George Orwell."},
                 {"number": 2, "title": "Animal Farm", "url": "u2",
                  "passage": "Animal Farm is a novella by George Orwell."}],
        app_support=[{"sentence": "It was written by George Orwell.", "cited": [1],
                      "supported": True},
                     {"sentence": "Orwell was French.", "cited": [], "supported": False}])
    (run / "results.jsonl").write_text(result.model_dump_json() + "\n")
    return run


def test_pairs_come_from_every_sentence_with_what_it_was_checked_against(
        tmp_path: Path) -> None:
    pairs = pairs_from_run(_run(tmp_path))
    assert [p.id for p in pairs] == ["wiki-a-001.1", "wiki-a-001.2"]
    assert [e.source for e in pairs[0].evidence] == [1]      # its citation
    assert [e.source for e in pairs[1].evidence] == [1, 2]   # cited none: all
    assert pairs[0].model == "tiny" and pairs[0].app_supported is True


def test_precision_and_recall_against_the_labels() -> None:
    ev = [Evidence(source=1, title="t", text="x")]
    pairs = [Pair(id=str(i), question="q", sentence="s", evidence=ev, label=label)
             for i, label in enumerate(["yes", "yes", "partial", "no", "yes", None])]
    score = score_check("c", pairs, [True, True, True, False, False, True])
    assert score.pairs == 5 and score.passed == 3
    assert score.precision == round(2 / 3, 3) and score.recall == round(2 / 3, 3)
    assert score.wrong_shown == round(1 / 3, 3) and score.lenient_precision == 1.0


def test_pairs_cli_extracts_and_scores(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "pairs.jsonl"
    done = runner.invoke(cli, ["eval", "pairs", "extract", "r1", "--out", str(out),
                               "--root", str(_run(tmp_path).parents[1])])
    assert done.exit_code == 0, done.output
    pairs = read_pairs(out)
    unlabelled = runner.invoke(cli, ["eval", "pairs", "score", "--pairs", str(out),
                                     "--data-dir", str(tmp_path / "data")])
    assert unlabelled.exit_code == 1 and "no labelled pair" in unlabelled.output
    pairs[0].label, pairs[1].label = "yes", "no"
    write_pairs(out, pairs)
    scored = runner.invoke(cli, ["eval", "pairs", "score", "--pairs", str(out),
                                 "--data-dir", str(tmp_path / "data")])
    assert scored.exit_code == 0, scored.output
    assert "| check | pairs | passed | precision | recall |" in scored.output
    rows = [line for line in scored.output.splitlines() if line.startswith("| ")
            and not line.startswith("| check")]
    assert len(rows) == 1 + 7  # the app's own verdicts, then 7 variants
    assert "as run (the app's verdict) | 2 | 1 | 1.00 | 1.00 | 0.00" in scored.output


def test_the_scorer_reports_the_lead(tmp_path: Path) -> None:
    q = load_dataset("labelled-wiki")[0]
    r = QuestionResult(id=q.id, question=q.question, answer=f"> {q.gold_sentences[0]}",
                       finish_reason="unverified", quotes=[{"text": q.gold_sentences[0]}],
                       first_text_ms=800.0)
    Scorer(None).score(q, r)
    assert r.metrics["lead_hit"] == 1.0 and r.metrics["quoted"] == 1.0
    assert r.metrics["abstained"] == 0.0 and r.metrics["answer_contains"] == 1.0
    json.dumps(r.metrics)


def test_a_shown_pronoun_after_a_withheld_sentence_is_counted() -> None:
    from evals.runner import dangling_shown

    support = [{"sentence": "Armstrong walked first.", "withheld": True},
               {"sentence": "He became the first American on the Moon.", "withheld": False},
               {"sentence": "It was 1969.", "withheld": False}]
    assert dangling_shown(support) == 1  # "It" follows a shown sentence
    assert dangling_shown([{**s, "withheld": True} for s in support[:2]]) == 0


def test_the_apps_own_notes_are_not_claims() -> None:
    from evals.runner import answer_sentences

    answer = (f"> Titan is the largest moon of Saturn. [citation:2]\n\n{UNVERIFIED_TEXT[0]}")
    assert answer_sentences(answer) == [("Titan is the largest moon of Saturn.", [2])]
