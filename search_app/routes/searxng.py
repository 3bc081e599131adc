"""``GET /searxng/search``: the local index in SearXNG's JSON shape, for SearXNG clients."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query

from retrieval.searxng import searxng_search
from search_app.deps import IndexDep
from serving.errors import BadRequestError

__all__ = ["router"]

router = APIRouter(prefix="/searxng", tags=["searxng"])


@router.get("/search")
async def search(index: IndexDep, q: str = Query(..., min_length=1, max_length=2000),
                 format: str = Query("json"), pageno: int = Query(1, ge=1, le=50)
                 ) -> dict[str, Any]:
    """SearXNG's ``/search?q=...&format=json`` over the local index (JSON only)."""
    if format != "json":
        raise BadRequestError("Only format=json is served.", param="format")
    return await asyncio.to_thread(searxng_search, index, q, pageno=pageno)
