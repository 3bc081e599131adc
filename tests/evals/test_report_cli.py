"""Scoring, reports and the CLI's error handling, without a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from evals.datasets import Question
from evals.report import compare_runs, summarize, write_report
from evals.runner import QuestionResult, RunConfig, Scorer, answer_sentences, write_config
from search_app.cli import cli
from search_app.prompts import ABSTAIN_TEXT

GOLD = "https://git-scm.com/docs/git-gc#_configuration"


class WordSupport:
    """Supported when every word of the sentence occurs in the evidence."""

    name = "words"

    def supports(self, evidence: list[str], sentence: str, question: str = "") -> bool:
        known = set(" ".join(evidence).lower().replace(".", "").split())
        return set(sentence.lower().replace(".", "").split()) <= known


def _result(qid: str, answer: str, *, finish: str = "stop", total: float = 1000.0
            ) -> QuestionResult:
    return QuestionResult(
        id=qid, question="q", answer=answer, finish_reason=finish,
        sources=[{"number": 1, "url": GOLD, "passage": "the default is 30 days"},
                 {"number": 2, "url": "https://git-scm.com/docs/git-log",
                  "snippet": "log"}],
        timings={"search_ms": 10.0, "read_ms": 0.0, "rank_ms": 5.0, "ttft_ms": 200.0,
                 "total_ms": total, "fallbacks": []},
        usage={"prompt_tokens": 100, "completion_tokens": 40}, wall_ms=total + 5)


def test_scorer_fills_every_metric() -> None:
    q = Question(id="a", question="How long?", answers=["30 days"], gold_urls=[GOLD],
                 gold_passage="the default is 30 days")
    r = _result("a", "The default is 30 days.[citation:1] Logs are kept.[citation:2]")
    Scorer(WordSupport()).score(q, r)
    assert r.metrics["recall@1_anchor"] == 1.0 and r.metrics["mrr_page"] == 1.0
    assert r.metrics["answer_contains"] == 1.0 and r.metrics["exact_match"] == 0.0
    assert r.metrics["passage_recall"] == 1.0
    assert r.metrics["citation_recall"] == 0.5 and r.metrics["citation_precision"] == 0.5
    assert r.metrics["false_abstention"] == 0.0
    assert r.metrics["tokens_per_s"] == pytest.approx(39 / 0.785)
    assert "index_recall@5_page" not in r.metrics  # not measured
    assert "related_ge2" not in r.metrics and r.metrics["withheld_sentences"] == 0.0
    r.related, r.withheld = ["Why?", "How long exactly?"], 2
    Scorer(WordSupport(), related=True).score(q, r)
    assert r.metrics["related_ge2"] == 1.0 and r.metrics["withheld_sentences"] == 2.0
    r.related = ["Why?"]
    Scorer(WordSupport(), related=True).score(q, r)
    assert r.metrics["related_ge2"] == 0.0
    r.index_urls = ["https://git-scm.com/docs/git-log", f"{GOLD}~2"]
    Scorer(None).score(q, r)
    assert r.metrics["index_recall@5_anchor"] == 1.0 and r.metrics["index_mrr_page"] == 0.5
    assert "citation_recall" not in r.metrics  # no support check

    none = Question(id="n", question="Who won?", tags=["unanswerable"])
    gated = _result("n", ABSTAIN_TEXT, finish="no_relevant_sources")
    Scorer(WordSupport()).score(none, gated)
    assert gated.metrics["abstention"] == 1.0 and "citation_recall" not in gated.metrics


def test_only_generated_answers_are_scored_and_timed() -> None:
    """A refusal or a cut-off answer earns no answer metrics (the abstain text shares
    words with gold passages), and refusals do not pull the latency percentiles down."""
    q = Question(id="a", question="How long?", answers=["30 days"], gold_urls=[GOLD],
                 gold_passage="the default is 30 days, the sources do not cover")
    refused = _result("r", ABSTAIN_TEXT, total=5.0)
    Scorer(WordSupport()).score(q, refused)
    assert refused.metrics["false_abstention"] == 1.0
    assert "passage_recall" not in refused.metrics and "f1" not in refused.metrics
    cut = _result("c", "The default is 30 days.[citation:1] It", finish="timeout",
                  total=600_000.0)
    Scorer(WordSupport()).score(q, cut)
    assert cut.metrics["cut_off"] == 1.0 and "answer_contains" not in cut.metrics
    assert "citation_recall" not in cut.metrics
    good = _result("g", "The default is 30 days.[citation:1]", total=2000.0)
    Scorer(WordSupport()).score(q, good)
    assert good.metrics["cut_off"] == 0.0 and good.metrics["answer_contains"] == 1.0
    summary = summarize([refused, cut, good])
    assert summary["metrics"]["cut_off"] == {"mean": pytest.approx(1 / 3), "n": 3}
    assert summary["latency"]["total_ms"]["p50"] >= 2000.0  # the 5 ms refusal is left out
    assert summary["metrics"]["answer_contains"]["n"] == 1


def test_answer_sentences_keep_their_citations() -> None:
    assert answer_sentences("One.[citation:1] Two [citation:2][citation:3]. ") == [
        ("One.", [1]), ("Two .", [2, 3])]


def _run(tmp_path: Path, run_id: str, answers: list[str]) -> Path:
    run_dir = tmp_path / "runs" / run_id
    write_config(run_dir, RunConfig(run_id=run_id, dataset="dev", questions=len(answers)))
    q = Question(id="x", question="How long?", answers=["30 days"], gold_urls=[GOLD])
    with (run_dir / "results.jsonl").open("w") as out:
        for i, answer in enumerate(answers):
            r = _result(f"q{i}", answer, total=1000.0 * (i + 1))
            Scorer(WordSupport()).score(q, r)
            out.write(r.model_dump_json() + "\n")
        out.write('{"id": "torn')  # a run killed mid-line
    return run_dir


def test_report_and_compare(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", ["It is 30 days.[citation:1]", "No idea."])
    b = _run(tmp_path, "b", ["It is 30 days.[citation:1]"] * 2)
    summary = write_report(a)
    assert summary["questions"] == 2 and summary["metrics"]["answer_contains"]["mean"] == 0.5
    assert summary["latency"]["total_ms"] == {"p50": 1500.0, "p95": 1950.0}
    assert json.loads((a / "summary.json").read_text())["metrics"]["f1"]["n"] == 2
    page = (a / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<img src=\"http" not in page
    assert "| recall@5_page | 1.000 | 2 |" in (a / "report.md").read_text()
    text = compare_runs(a, b, tmp_path / "cmp")
    assert "| answer_contains | 0.500 | 1.000 | +0.500 |" in text
    assert (tmp_path / "cmp" / "compare.html").read_text().count("base64,") == 2
    assert summarize([])["answered"] == 0


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    root = ["--root", str(tmp_path)]
    for args, message in [
        (["eval", "run", "--dataset", "nope", *root], "unknown dataset 'nope'"),
        (["eval", "run", "--dataset", "dev", "--judge-model", "m", *root],
         "the judge needs both"),
        (["eval", "run", "--dataset", "dev", "--run-id", "a/b", *root], "invalid run id"),
        (["eval", "report", "missing", *root], "no run 'missing'"),
        (["eval", "run", "--dataset", "dev", "--base-url", "http://127.0.0.1:9", *root],
         "the app at http://127.0.0.1:9/health does not answer"),
        (["eval", "corpus", "--packages", "nope", *root], "unknown docs package nope"),
    ]:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.output


def test_cli_report_and_compare(tmp_path: Path) -> None:
    _run(tmp_path, "a", ["It is 30 days.[citation:1]"])
    _run(tmp_path, "b", ["Nope."])
    runner = CliRunner()
    out = runner.invoke(cli, ["eval", "report", "a", "--root", str(tmp_path)])
    assert out.exit_code == 0 and "# Evaluation run `a`" in out.output
    out = runner.invoke(cli, ["eval", "compare", "a", "b", "--root", str(tmp_path)])
    assert out.exit_code == 0 and "| answer_contains | 1.000 | 0.000 | -1.000 |" in out.output
    out = runner.invoke(cli, ["eval", "datasets"])
    assert out.exit_code == 0 and "simpleqa-abstain" in out.output


def test_judge_grades_and_support_over_an_openai_api() -> None:
    import httpx

    from evals.judges import JudgeClient, JudgeSupport

    seen: list[dict[str, object]] = []
    replies = iter(["A", " b.", "I am not sure", "YES", "No, it is not."])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        assert request.url.path == "/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer k"
        return httpx.Response(200, json={"choices": [{"message": {
            "content": next(replies)}}]})

    client = JudgeClient("http://judge/v1", "m", "k", transport=httpx.MockTransport(handler))
    assert [client.grade("Q?", "30 days", p) for p in ("a", "b", "c")] == [
        "CORRECT", "INCORRECT", "NOT_ATTEMPTED"]
    prompt = seen[0]["messages"][0]["content"]  # type: ignore[index]
    assert "Gold target: 30 days" in prompt and seen[0]["temperature"] == 0
    support = JudgeSupport(client)
    assert support.supports(["premise"], "claim") is True
    assert support.supports(["premise"], "claim") is False
    assert support.supports([" "], "claim") is False  # no evidence: no call, unsupported
    assert len(seen) == 5


def test_an_app_that_does_not_start_is_one_clear_error(tmp_path: Path) -> None:
    from evals.runner import AppStartError, started_app

    with pytest.raises(AppStartError, match=r"the app exited with 2 .*log: "):
        with started_app(tmp_path, serve_args=["--engine", "bogus"],
                         log_path=tmp_path / "app.log", ready_timeout=60):
            pass


def test_each_sentence_verdict_is_kept_and_crossed_with_the_apps(tmp_path: Path) -> None:
    """A mark run keeps the app's verdict and the judge's on every sentence, and
    ``eval agreement`` crosses them: what strict would emit, and how much of it the
    independent check supports (here: word overlap stands in for the judge)."""
    q = Question(id="a", question="How long?", answers=["30 days"], gold_urls=[GOLD])
    r = _result("a", "The default is 30 days.[citation:1] Logs are kept.[citation:2] "
                     "It is 30 days.[citation:1] The default is 30 days.[citation:2]")
    r.app_support_threshold = 0.55
    r.app_support = [  # what the app's own check said (its support event)
        {"sentence": "The default is 30 days.[citation:1]", "cited": [1],
         "supported": True, "score": 0.9, "withheld": False},
        {"sentence": "Logs are kept.[citation:2]", "cited": [2], "supported": True,
         "score": 0.6, "withheld": False},
        {"sentence": "It is 30 days.[citation:1]", "cited": [1], "supported": False,
         "score": 0.5, "withheld": False},
        {"sentence": "Withheld words.", "cited": [], "supported": False, "score": 0.2,
         "withheld": True},
        # a repeated sentence, judged again on its own citations: matched in order
        {"sentence": "The default is 30 days.[citation:2]", "cited": [2],
         "supported": False, "score": 0.5, "withheld": False},
    ]
    Scorer(WordSupport()).score(q, r)
    assert [(j["sentence"], j["supported"]) for j in r.judged] == [
        ("The default is 30 days.", True), ("Logs are kept.", False),
        ("It is 30 days.", False), ("The default is 30 days.", False)]
    run_dir = tmp_path / "runs" / "m"
    write_config(run_dir, RunConfig(run_id="m", dataset="dev", questions=1,
                                    support_check="words"))
    (run_dir / "results.jsonl").write_text(r.model_dump_json() + "\n")
    out = CliRunner().invoke(cli, ["eval", "agreement", "m", "--root", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "4 sentences with both verdicts; 1 withheld by strict, which the judge" in out.output
    assert "| passed (strict emits) | 1 | 1 | 0.50 |" in out.output
    assert "| rejected (strict withholds) | 0 | 2 | 0.00 |" in out.output
    assert "| 0.60 | 2 | 0.50 | 0.50 |" in out.output  # 0.9 and 0.6 kept
    assert "| 0.65 | 1 | 0.25 | 1.00 |" in out.output  # only the true one is left
    _run(tmp_path, "old", ["It is 30 days.[citation:1]"])  # scored without verdicts kept
    (tmp_path / "runs" / "old" / "results.jsonl").write_text(
        _result("q", "x").model_dump_json() + "\n")
    out = CliRunner().invoke(cli, ["eval", "agreement", "old", "--root", str(tmp_path)])
    assert out.exit_code == 1 and "has no per-sentence verdicts" in out.output
