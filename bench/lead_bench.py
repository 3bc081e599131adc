"""The lead's quote against the labelled set, without a model: lead hit rate.

For each question of the labelled set: the app's own search (the local index), its
ranking, and the quote :class:`~search_app.lead.LeadChooser` picks from the ranked
passages (numbered by first appearance, as packing numbers them); a hit is a quote that
holds a gold answering sentence (evals.runner.lead_hit). Also the same for the best
sentence by MiniLM cosine alone (the issue's baseline), and how long choosing takes.

    python -m bench.lead_bench --data-dir data --dataset labelled-wiki
    python -m bench.lead_bench --data-dir data/evals/corpora/git-full --dataset labelled-git

Writes bench/results/lead_<dataset>.json (every question: the quote, the hit) and prints
the summary. Answerable questions only (the off-corpus ones have no gold sentence; the
relevance gate, not the lead, answers them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from evals.datasets import load_dataset
from evals.runner import lead_hit
from retrieval.embeddings import SentenceTransformerModel
from retrieval.index import LocalIndex, load_model
from retrieval.ranking import Ranker
from retrieval.types import Document, Passage
from search_app.lead import LeadChooser, split_sentences

RESULTS = Path(__file__).resolve().parent / "results"


def _numbered(passages: list[Passage]) -> list[Passage]:
    """Source numbers by first appearance (what packing does before the model sees them)."""
    numbers: dict[int, int] = {}
    return [replace(p, source_id=numbers.setdefault(p.source_id, len(numbers) + 1))
            for p in passages]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--dataset", default="labelled-wiki")
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--passages", type=int, default=12)
    parser.add_argument("--show-misses", action="store_true")
    args = parser.parse_args()

    model = load_model(args.data_dir)
    index = LocalIndex(args.data_dir, model)
    index.load()
    ranker, chooser = Ranker(model), LeadChooser(model)
    # choosing timed without the embedding cache: what a question with new pages costs
    cold = LeadChooser(SentenceTransformerModel(st_model=model.model))
    baseline = LeadChooser(model, min_score=-10.0)
    rows, times = [], []
    for q in load_dataset(args.dataset):
        if not q.gold_sentences:
            continue
        results = index.search(q.question, args.sources)
        docs = [Document(result=r, text=r.snippet, title=r.title, status="ok")
                for r in results]
        passages = _numbered(await ranker.rank(q.question, docs, args.passages))
        split_sentences.cache_clear()
        t0 = time.perf_counter()
        await cold.choose(q.question, passages)
        times.append((time.perf_counter() - t0) * 1000)
        quote = await chooser.choose(q.question, passages)
        cosine = _best_by_cosine(baseline, q.question, passages)
        gold_in = any(" ".join(g.split()) in " ".join(p.text.split())
                      for g in q.gold_sentences for p in passages)
        rows.append({
            "id": q.id, "question": q.question, "gold_in_passages": gold_in,
            "quote": quote.text if quote else None, "score": quote.score if quote else None,
            "hit": lead_hit([{"text": quote.text}] if quote else [], q.gold_sentences,
                            q.answers),
            "cosine_hit": lead_hit([{"text": cosine}] if cosine else [], q.gold_sentences,
                                   q.answers),
            "gold": q.gold_sentences})
    held = [r for r in rows if r["gold_in_passages"]]
    summary = {
        "dataset": args.dataset, "questions": len(rows),
        "gold_in_passages": len(held),
        "lead_hit_rate": _mean(r["hit"] for r in rows),
        "lead_hit_rate_where_retrieved": _mean(r["hit"] for r in held),
        "cosine_only_hit_rate_where_retrieved": _mean(r["cosine_hit"] for r in held),
        "quoted": _mean(float(r["quote"] is not None) for r in rows),
        "choose_ms_p50": round(statistics.median(times), 1) if times else None,
        "choose_ms_p95": round(sorted(times)[int(0.95 * (len(times) - 1))], 1)
        if times else None,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"lead_{args.dataset}.json"
    out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2,
                              ensure_ascii=False) + "\n")
    print(json.dumps(summary, indent=2))
    if args.show_misses:
        for r in held:
            if not r["hit"]:
                print(f"\n{r['id']}: {r['question']}\n  quote: {r['quote']}\n"
                      f"  gold:  {r['gold'][0][:200]}")


def _best_by_cosine(chooser: LeadChooser, question: str, passages: list[Passage]
                    ) -> str | None:
    """The sentence closest to the question by MiniLM cosine alone (no other term)."""
    import numpy as np

    from search_app.lead import candidate_sentences

    candidates = candidate_sentences(passages[:chooser.passages])
    if not candidates:
        return None
    vectors = chooser.model.embed_multi([question, *[c.text for c in candidates]])
    return candidates[int(np.argmax(vectors[1:] @ vectors[0]))].text


def _mean(values) -> float | None:  # type: ignore[no-untyped-def]
    values = list(values)
    return round(sum(values) / len(values), 3) if values else None


if __name__ == "__main__":
    asyncio.run(main())
