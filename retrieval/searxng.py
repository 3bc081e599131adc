"""The local index in SearXNG's JSON response shape (``GET /searxng/search?format=json``).

Tools written for SearXNG (Open WebUI, LangChain's SearxSearchWrapper, Perplexica) can
then use the local index unchanged. The field set follows SearXNG's own JSON output;
fields that only make sense for a metasearch over the web stay empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from retrieval.types import Passage

if TYPE_CHECKING:
    from retrieval.index import LocalIndex

__all__ = ["ENGINE_NAME", "searxng_response", "searxng_search"]

ENGINE_NAME = "local"


def searxng_response(query: str, passages: list[Passage], *, offset: int = 0
                     ) -> dict[str, Any]:
    """One SearXNG result per passage (best first); ``offset`` numbers later pages."""
    results = []
    for i, p in enumerate(passages, offset + 1):
        parts = urlsplit(p.url)
        results.append({
            "url": p.url,
            "title": p.title,
            "content": p.text,
            "engine": ENGINE_NAME,
            "engines": [ENGINE_NAME],
            "score": round(float(p.score), 6),
            "category": "general",
            "positions": [i],
            "parsed_url": [parts.scheme, parts.netloc, parts.path, "", parts.query,
                           parts.fragment],
            "template": "default.html",
            "publishedDate": None,
            "thumbnail": "",
            "img_src": "",
            "priority": "",
        })
    return {
        "query": query,
        "number_of_results": len(results),
        "results": results,
        "answers": [],
        "corrections": [],
        "infoboxes": [],
        "suggestions": [],
        "unresponsive_engines": [],
    }


def searxng_search(index: LocalIndex, query: str, *, pageno: int = 1,
                   per_page: int = 10) -> dict[str, Any]:
    """Page ``pageno`` of the local results, one per document, as SearXNG returns them."""
    if pageno < 1:
        raise ValueError("pageno starts at 1")
    passages = index.passages(query, pageno * per_page, max_per_source=1)
    start = (pageno - 1) * per_page
    return searxng_response(query, passages[start:start + per_page], offset=start)
