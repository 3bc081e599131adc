"""The metrics against hand-computed values."""

from __future__ import annotations

import pytest

from evals import metrics as m

GITFAQ = "https://git-scm.com/docs/gitfaq"


def test_normalize_answer_follows_squad() -> None:
    assert m.normalize_answer("The  Eiffel-Tower, in Paris![citation:2]") == \
        "eiffeltower in paris"
    assert m.normalize_answer("An apple a day") == "apple day"


def test_exact_match_and_f1() -> None:
    assert m.exact_match("The 30 days.", ["30 days"]) == 1.0
    assert m.exact_match("about 30 days", ["30 days"]) == 0.0
    # pred: "about 30 days" (3 tokens), gold "30 days" (2): P=2/3, R=1, F1=0.8
    assert m.f1_score("about 30 days", ["30 days", "thirty"]) == pytest.approx(0.8)
    assert m.f1_score("nothing", ["30 days"]) == 0.0
    assert m.exact_match("x", []) is None and m.f1_score("x", []) is None


def test_answer_contains_whole_tokens_only() -> None:
    assert m.answer_contains("It defaults to 30 days [citation:1].", ["30 days"]) == 1.0
    assert m.answer_contains("It defaults to 130 days.", ["30 days"]) == 0.0
    assert m.answer_contains("x", []) is None


def test_token_recall_counts_multiplicity() -> None:
    # gold tokens: push(2) over(1) http(1) -> 4; prediction has push once, http once
    assert m.token_recall("Push over SSH; http.", "push push over http") == \
        pytest.approx(3 / 4)
    assert m.token_recall("x", None) is None


def test_recall_and_mrr_page_and_anchor() -> None:
    retrieved = [f"{GITFAQ}#user-name", "https://git-scm.com/docs/git-config#_variables",
                 f"{GITFAQ}#http-credentials~3", "http://www.git-scm.com/docs/git-gc.html"]
    gold = [f"{GITFAQ}#http-credentials", "https://git-scm.com/docs/git-gc"]
    # anchor level: distinct list is user-name, git-config#_variables, http-credentials,
    # git-gc (page only) -> http-credentials at rank 3, git-gc (gold has no anchor) at 4
    assert m.recall_at_k(retrieved, gold, 1, anchor=True) == 0.0
    assert m.recall_at_k(retrieved, gold, 3, anchor=True) == 0.5
    assert m.recall_at_k(retrieved, gold, 5, anchor=True) == 1.0
    assert m.mrr(retrieved, gold, anchor=True) == pytest.approx(1 / 3)
    # page level: gitfaq (rank 1), git-config (2), git-gc (3)
    assert m.recall_at_k(retrieved, gold, 1) == 0.5
    assert m.recall_at_k(retrieved, gold, 3) == 1.0
    assert m.mrr(retrieved, gold) == 1.0
    assert m.mrr([], gold) == 0.0
    # split sections: "#anchor~N" is the anchor, "#~N" (no anchor) is the page itself
    assert m.normalize_url(f"{GITFAQ}#user-name~4", anchor=True) == \
        "git-scm.com/docs/gitfaq#user-name"
    assert m.normalize_url(f"{GITFAQ}#~11", anchor=True) == "git-scm.com/docs/gitfaq"
    assert m.recall_at_k(retrieved, [], 5) is None and m.mrr(retrieved, []) is None


def test_alce_citation_recall_and_precision() -> None:
    passages = {1: "alpha", 2: "beta", 3: "gamma"}

    def supports(evidence: list[str], sentence: str) -> bool:
        # a sentence is supported when every word it needs is in the evidence
        needed = set(sentence.split())
        return needed <= set(" ".join(evidence).split())

    sentences = [
        ("alpha", [1]),          # supported; 1 relevant citation
        ("alpha", [1, 2]),       # joint ok; 2 alone fails and 1 still supports: 2 irrelevant
        ("alpha beta", [1, 2]),  # needs both: both relevant
        ("gamma", [1]),          # unsupported: its citation is irrelevant
        ("delta", []),           # no citation: recall 0
        ("beta", [9]),           # cites a source that does not exist: unsupported
    ]
    out = m.alce_citations(sentences, passages, supports)
    assert out["citation_recall"] == pytest.approx(3 / 6)
    # citations: 1 + 2 + 2 + 1 + 0 + 1 = 7; relevant: 1 + 1 + 2 = 4
    assert out["citation_precision"] == pytest.approx(4 / 7)
    assert out["sentences"] == 6 and out["citations"] == 7
    # supported at all: the 3 above, and "beta" (its only citation names no source, so
    # it is checked against all passages); "delta" is in none: 4 of 6
    assert out["sentences_supported"] == pytest.approx(4 / 6)
    uncited = m.alce_citations([("beta", []), ("gamma", [1])], passages, supports)
    assert uncited["citation_recall"] == 0.0 and uncited["sentences_supported"] == 0.5
    empty = m.alce_citations([], passages, supports)
    assert empty["citation_recall"] is None and empty["citation_precision"] is None


def test_simpleqa_scores() -> None:
    grades = ["CORRECT"] * 6 + ["INCORRECT"] * 2 + ["NOT_ATTEMPTED"] * 2
    out = m.simpleqa_scores(grades)
    assert out["correct"] == pytest.approx(0.6)
    assert out["not_attempted"] == pytest.approx(0.2)
    assert out["correct_given_attempted"] == pytest.approx(0.75)
    assert out["f_score"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert m.simpleqa_scores([])["f_score"] is None


def test_percentile_matches_numpy_linear() -> None:
    assert m.percentile([1, 2, 3, 4], 50) == 2.5
    assert m.percentile([10.0, 20.0, 30.0, 40.0, 50.0], 95) == pytest.approx(48.0)
    assert m.percentile([], 50) is None
