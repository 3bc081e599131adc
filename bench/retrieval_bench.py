"""Retrieval benchmark: ranking latency (cold vs warm cache vs bare encode), local index
query latency and memory over the default corpus, and recall@5 of hybrid vs BM25 alone.

    python -m bench.retrieval_bench [--data-dir data] [--reps 3]

Inputs install offline: Debian's python3.11-doc and git-doc HTML (``apt-get download``,
unpacked under bench/results/tmp/) and the default Wikipedia corpus (built into
``--data-dir`` if missing). Results go to bench/results/retrieval.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retrieval.chunking import chunk_document, chunk_text  # noqa: E402
from retrieval.corpus import SourceText, build_default_index, html_to_text, read_file  # noqa: E402
from retrieval.embeddings import EmbeddingCache, SentenceTransformerModel  # noqa: E402
from retrieval.index import LocalIndex, load_model  # noqa: E402
from retrieval.ranking import Ranker, RankOptions, embedding_text  # noqa: E402
from retrieval.types import Document, SearchResult  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TMP = RESULTS / "tmp"
PY_HTML = "usr/share/doc/python3.11/html"
GIT_HTML = "usr/share/doc/git-doc"
MAX_PAGE_CHARS = 20_000
HYBRIDS = {  # one passage per document: recall counts documents
    "hybrid_default_convex_0.7": RankOptions(max_per_source=1),
    "hybrid_convex_0.5": RankOptions(fusion="convex", dense_weight=0.5, max_per_source=1),
    "hybrid_rrf": RankOptions(fusion="rrf", max_per_source=1),
    "hybrid_default_no_mmr": RankOptions(max_per_source=1, mmr_lambda=1.0),
}

PAGES = ["tutorial/controlflow.html", "tutorial/datastructures.html", "tutorial/errors.html",
         "tutorial/classes.html", "tutorial/inputoutput.html", "tutorial/modules.html",
         "tutorial/stdlib.html", "tutorial/venv.html"]
RANK_QUERIES = [
    "how do I give a function parameter a default value", "what does the else clause of a "
    "loop do", "how to remove an item from a list by index", "how do I catch several "
    "exceptions at once", "what is a class variable shared by all instances", "how to read "
    "a file line by line", "how does Python find a module when importing", "how do I "
    "create a virtual environment", "format a float with two decimals", "what is a "
    "generator expression", "how to sort a list of tuples by the second item", "what is "
    "the difference between a set and a list"]
INDEX_QUERIES = [
    "who painted the Mona Lisa", "tallest mountain in the world", "when did World War II "
    "end", "how does photosynthesis work", "what is the speed of light", "the author of "
    "Pride and Prejudice", "largest ocean on Earth", "what causes earthquakes", "inventor "
    "of the telephone", "capital city of Australia", "what is DNA", "the French Revolution",
    "how do vaccines work", "the planet with rings", "who was Genghis Khan", "what is "
    "inflation in economics", "the theory of relativity", "Ancient Egyptian pyramids",
    "the Great Barrier Reef", "how do black holes form"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine() -> dict[str, Any]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_start": os.getloadavg()}


def unpack(package: str) -> Path:
    """Download and unpack a Debian package once (no root needed)."""
    out = TMP / package
    if not out.exists():
        TMP.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", package], cwd=TMP, check=True)
        deb = max(TMP.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True)
    return out


def bench_ranking(st: Any, reps: int) -> dict[str, Any]:
    """8 pages, ~100 chunks: bare encode vs Ranker cold (empty cache) vs warm."""
    root = unpack("python3.11-doc") / PY_HTML
    tokenizer = SentenceTransformerModel(st_model=st).tokenizer()
    docs = []
    for i, name in enumerate(PAGES, 1):
        title, text = html_to_text((root / name).read_text())
        chunks = chunk_text(text, tokenizer)
        text = text[:chunks[min(12, len(chunks) - 1)].end]  # about 13 chunks a page
        url = f"https://docs.python.org/3.11/{name}"
        docs.append(Document(SearchResult(title, url, "", "bench", i), text, title))
    passages = [p for i, d in enumerate(docs, 1) for p in chunk_document(d, i, tokenizer)]
    texts = [embedding_text(p.title, p.text) for p in passages]
    st.encode(texts[:8])  # warm-up
    bare, cold, warm_new_query, warm_same_query = [], [], [], []
    for rep in range(reps):
        t = time.perf_counter()
        st.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        bare.append(time.perf_counter() - t)
        ranker = Ranker(SentenceTransformerModel(st_model=st, cache=EmbeddingCache(
            TMP / f"cold-{time.time_ns()}.sqlite")))
        t = time.perf_counter()
        ranker.rank_sync(RANK_QUERIES[rep % len(RANK_QUERIES)], docs, 8)
        cold.append(time.perf_counter() - t)
    for i in range(30):
        t = time.perf_counter()
        ranker.rank_sync(f"{RANK_QUERIES[i % len(RANK_QUERIES)]} ({i})", docs, 8)
        warm_new_query.append(time.perf_counter() - t)
        t = time.perf_counter()
        ranker.rank_sync(RANK_QUERIES[0], docs, 8)
        warm_same_query.append(time.perf_counter() - t)
    for path in TMP.glob("cold-*.sqlite*"):
        path.unlink()
    ms = lambda xs: round(1000 * statistics.median(xs), 1)  # noqa: E731
    return {"pages": len(docs), "chunks": len(passages),
            "bare_encode_ms_p50": ms(bare), "cold_rank_ms_p50": ms(cold),
            "cold_over_bare": round(statistics.median(cold) / statistics.median(bare), 2),
            "warm_rank_ms_p50_new_query": ms(warm_new_query),
            "warm_rank_ms_p95_new_query": round(1000 * percentile(warm_new_query, .95), 1),
            "warm_rank_ms_p50_cached_query": ms(warm_same_query)}


def bench_local_index(data_dir: Path) -> dict[str, Any]:
    before = rss_mb()
    model = load_model(data_dir)
    model.embed("warm up")  # torch's first-call allocations count as the model's
    after_model = rss_mb()
    index = LocalIndex(data_dir, model)
    build_s = None
    if not index.is_built() or index.get_meta("corpus:wikipedia-en") is None:
        t = time.perf_counter()
        build_default_index(index)
        build_s = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    index.load()
    load_ms = round(1000 * (time.perf_counter() - t), 1)
    loaded = rss_mb()
    index.passages("warm up", 5)
    cache, times, cached = model.cache, [], []
    for q in INDEX_QUERIES:
        model.cache = None  # a query never seen: the encode counts (earlier runs cached it)
        t = time.perf_counter()
        index.passages(q, 8)
        times.append(time.perf_counter() - t)
        model.cache = cache
        index.passages(q, 8)
        t = time.perf_counter()
        index.passages(q, 8)  # the same query again: its vector comes from the cache
        cached.append(time.perf_counter() - t)
    docs, passages = index.counts()
    return {"documents": docs, "passages": passages, "build_s": build_s, "load_ms": load_ms,
            "query_ms_p50": round(1000 * statistics.median(times), 1),
            "query_ms_p95": round(1000 * percentile(times, .95), 1),
            "repeat_query_ms_p50": round(1000 * statistics.median(cached), 1),
            "rss_mb_process": round(rss_mb()), "rss_mb_model": round(after_model - before),
            "rss_mb_index": round(loaded - after_model)}


class _Sections(HTMLParser):
    """FAQ entries: (question, answer) from gitfaq's <dt>/<dd> and Sphinx leaf sections."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[tuple[str, str]] = []
        self._mode: str | None = None
        self._q, self._a = "", ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("dt", "h2", "h3", "h4"):
            self._flush()
            self._mode, self._q, self._a = "q", "", ""
        elif tag in ("dd", "p", "pre", "li") and self._mode == "q":
            self._mode = "a"
        if tag == "a" and ("class", "headerlink") in attrs:
            self._mode = "skip:" + (self._mode or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._mode and self._mode.startswith("skip:"):
            self._mode = self._mode[5:] or None

    def handle_data(self, data: str) -> None:
        if self._mode == "q":
            self._q += data
        elif self._mode == "a":
            self._a += data

    def _flush(self) -> None:
        q, a = " ".join(self._q.split()), " ".join(self._a.split())
        if q.endswith("?") and len(a) > 40:
            self.items.append((q, a))

    def close(self) -> None:
        super().close()
        self._flush()


def faq_pairs(path: Path) -> list[tuple[str, str]]:
    parser = _Sections()
    parser.feed(path.read_text())
    parser.close()
    return parser.items


def bench_quality(st: Any) -> dict[str, Any]:
    """recall@5 on FAQ questions (gitfaq + Python FAQ) over git-doc pages and FAQ answers."""
    git = unpack("git-doc") / GIT_HTML
    py = unpack("python3.11-doc") / PY_HTML
    sources, questions = [], []
    for path in sorted(git.glob("*.html")):
        page = read_file(path)
        # The 41 longest pages (2/3 of the text) are left out to keep the CPU run short.
        if path.name != "gitfaq.html" and len(page.text) <= MAX_PAGE_CHARS:
            sources.append(page)
    for page in [git / "gitfaq.html", *sorted((py / "faq").glob("*.html"))]:
        for n, (question, answer) in enumerate(faq_pairs(page)):
            url = f"{page.name}#q{n}"
            sources.append(SourceText(key=url, kind="faq", url=url, title="", text=answer))
            questions.append((question, url, page.name == "gitfaq.html"))
    data = TMP / "quality"
    index = LocalIndex(data, SentenceTransformerModel(
        st_model=st, cache=EmbeddingCache(data / "cache.sqlite")))
    index.upsert(sources, replace_kind="faq")
    snap = index.load()
    rows = snap["passages"]
    import numpy as np

    def top_docs(order: Any) -> list[str]:
        seen: list[str] = []
        for i in order:
            url = rows[int(i)][4]
            if url not in seen:
                seen.append(url)
            if len(seen) == 5:
                break
        return seen

    systems: dict[str, list[bool]] = {}
    for question, gold, _ in questions:
        bm25 = snap["sparse"].scores(question)
        dense = snap["vectors"] @ index.model.embed(question)
        found = {"bm25": top_docs(np.argsort(-bm25)), "dense": top_docs(np.argsort(-dense))}
        for name, options in HYBRIDS.items():
            index.options = options
            found[name] = [p.url for p in index.passages(question, 5)]
        for name, urls in found.items():
            systems.setdefault(name, []).append(gold in urls)
    git_n = sum(1 for q in questions if q[2])
    return {"questions": len(questions), "gitfaq_questions": git_n,
            "corpus_documents": index.counts()[0], "corpus_passages": index.counts()[1],
            "recall_at_5": {name: round(sum(hits) / len(hits), 3)
                            for name, hits in systems.items()},
            "recall_at_5_gitfaq": {name: round(sum(hits[i] for i, q in enumerate(questions)
                                                   if q[2]) / max(git_n, 1), 3)
                                   for name, hits in systems.items()}}


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrieval.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Retrieval benchmark", "", "Machine: " + json.dumps(results["machine"]), ""]
    for section in ("ranking", "local_index", "quality"):
        lines += [f"## {section}", "", "| metric | value |", "|---|---|"]
        for key, value in results.get(section, {}).items():
            lines.append(f"| {key} | {json.dumps(value)} |")
        lines.append("")
    (RESULTS / "retrieval.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", choices=["ranking", "local_index", "quality"], nargs="*")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:  # the local index alone in a fresh process, so its RSS is its own
        print(json.dumps(bench_local_index(args.data_dir)))
        return
    chosen = args.only or ["ranking", "local_index", "quality"]
    previous = RESULTS / "retrieval.json"
    results: dict[str, Any] = json.loads(previous.read_text()) if previous.exists() else {}
    results["machine"] = machine()
    if "local_index" in chosen:
        out = subprocess.run([sys.executable, "-m", "bench.retrieval_bench", "--inner",
                              "--data-dir", str(args.data_dir)], check=True,
                             capture_output=True, text=True).stdout
        results["local_index"] = json.loads(out.strip().splitlines()[-1])
        print("local_index", results["local_index"], file=sys.stderr)
    if {"ranking", "quality"} & set(chosen):
        from sentence_transformers import SentenceTransformer

        from retrieval.embeddings import default_model_path

        st = SentenceTransformer(str(default_model_path()), device="cpu")
        if "ranking" in chosen:
            results["ranking"] = bench_ranking(st, args.reps)
            print("ranking", results["ranking"], file=sys.stderr)
        if "quality" in chosen:
            results["quality"] = bench_quality(st)
            print("quality", results["quality"], file=sys.stderr)
    results["machine"]["loadavg_end"] = os.getloadavg()
    write(results)


if __name__ == "__main__":
    main()
