"""Pages into anchored sections, the local web, and the dataset format."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from evals.corpus import PACKAGES, CorpusServer, DocPackage, page_sections, page_sources
from evals.datasets import DatasetError, load_dataset, read_jsonl

# The shapes of the real pages: asciidoc (git), Sphinx (python), DocBook (debian-faq).
ASCIIDOC_FAQ = """<html><head><title>gitfaq(7)</title></head><body>
<h2 id="_configuration">Configuration</h2><div class="sectionbody">
<div class="dlist" id="user-name"><dl>
<dt class="hdlist1">What should I put in <code>user.name</code>?</dt>
<dd><p>You should put your personal name, generally a given and family name.</p></dd>
<dt class="hdlist1">What does <code>http.postBuffer</code> really do?</dt>
<dd><p>This option changes the size of the buffer that Git uses when pushing.</p>
<div class="paragraph" id="http-postbuffer"><p>Leave it at the default size.</p></div></dd>
</dl></div></div></body></html>"""

SPHINX = """<html><head><title>General Python FAQ</title></head><body>
<section id="what-is-python"><h3>What is Python?<a class="headerlink" href="#x">¶</a></h3>
<p>Python is an interpreted, interactive, object-oriented programming language.</p>
</section></body></html>"""


def test_sections_take_the_anchor_before_on_or_after_the_question() -> None:
    sections = page_sections(ASCIIDOC_FAQ, terms=True)
    by_heading = {s.heading: s.anchor for s in sections if s.heading}
    assert by_heading == {"Configuration": "_configuration",
                          "What should I put in user.name?": "user-name",
                          "What does http.postBuffer really do?": "http-postbuffer"}
    sphinx = [s for s in page_sections(SPHINX) if s.heading]
    assert [(s.heading, s.anchor) for s in sphinx] == [("What is Python?", "what-is-python")]


def test_page_sources_and_the_stripped_variant() -> None:
    git = PACKAGES["git"]
    full = page_sources(git, "gitfaq.html", ASCIIDOC_FAQ)
    urls = [s.url for s in full]
    assert "https://git-scm.com/docs/gitfaq#user-name" in urls
    assert "https://git-scm.com/docs/gitfaq#http-postbuffer" in urls
    first = next(s for s in full if s.url.endswith("#user-name"))
    assert first.title == "gitfaq(7) - What should I put in user.name?"
    assert first.text.startswith("What should I put in user.name?")
    stripped = page_sources(git, "gitfaq.html", ASCIIDOC_FAQ, strip_questions=True)
    for source in stripped:
        assert "What should I put" not in source.text + source.title
        assert "really do?" not in source.text + source.title
    assert any("given and family name" in s.text for s in stripped)


def test_corpus_server_serves_public_urls_from_the_unpacked_tree(tmp_path: Path) -> None:
    package = DocPackage("demo", "demo-doc", "usr/share/doc/demo", "https://docs.demo.org/1/",
                         strip_suffix=True)
    html = tmp_path / "pages" / "demo-doc" / package.root
    html.mkdir(parents=True)
    (html / "faq.html").write_text(SPHINX)
    (html.parent.parent.parent.parent / ".complete").write_text("demo.deb")
    (tmp_path / "secret.html").write_text("no")
    with CorpusServer([package], tmp_path) as server:
        by_host = httpx.get(f"{server.url}/1/faq", headers={"Host": "docs.demo.org"})
        assert by_host.status_code == 200 and "What is Python?" in by_host.text
        by_url = httpx.get(f"{server.url}/https://docs.demo.org/1/faq#what-is-python")
        assert by_url.status_code == 200
        assert httpx.get(f"{server.url}/https://docs.demo.org/1/../../secret").status_code \
            == 404
        assert httpx.get(f"{server.url}/https://other.org/1/faq").status_code == 404


def test_the_shipped_dev_set() -> None:
    questions = load_dataset("dev")
    assert len(questions) == 26
    assert sum(q.unanswerable for q in questions) == 3
    assert sum(bool(q.answers) for q in questions) == 9
    for q in questions:
        assert q.unanswerable or all(u.startswith("https://git-scm.com/docs/") and "#" in u
                                     for u in q.gold_urls), q.id
    faq = [q for q in questions if "gitfaq" in q.tags]
    assert len(faq) == 14 and all(q.gold_passage for q in faq)


def test_dataset_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "question": "q?"}) + "\n" +
                   json.dumps({"id": "b"}) + "\n")
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: question"):
        read_jsonl(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text((json.dumps({"id": "a", "question": "q?"}) + "\n") * 2)
    with pytest.raises(DatasetError, match="duplicate id 'a'"):
        read_jsonl(dup)
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("no-such-set")
