"""An OpenAI-shaped model server that streams at a fixed rate, for load tests of the app.

Why: under load, the app's own overhead (search, ranking, grounding, SSE, the store)
must be measured apart from the model's speed. This server answers in a known time
(first token after ``--ttft-ms``, then one token every ``1 / --rate`` s, ``--tokens`` in
all) and costs almost no CPU, so whatever the app adds is the app's. It serves what the
upstream engine uses: ``GET /v1/models``, ``POST /tokenize`` and streaming
``POST /v1/chat/completions`` and ``/v1/completions`` (JSON-schema requests, the
related questions, get one JSON chunk at once).

    python -m bench.fixed_rate_upstream --port 9100 --rate 20 --tokens 40 --ttft-ms 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

__all__ = ["create_app"]

WORDS = ("The tower was designed by the engineers of the company of Gustave Eiffel . "
         "It stands in Paris and was built for the world fair . ").split()
RELATED = {"questions": ["When was the tower built?", "Who was Gustave Eiffel?",
                         "How tall is the tower?", "Where is the tower located?",
                         "Why was the tower built?"]}


def create_app(*, rate: float, tokens: int, ttft_ms: float) -> FastAPI:
    app = FastAPI()
    app.state.active = 0

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fixed-rate", "object": "model",
                                            "owned_by": "bench", "max_model_len": 4096}]}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, int]:
        body = await request.json()
        return {"count": max(1, len(str(body.get("prompt", ""))) // 4)}

    @app.get("/active")
    async def active() -> dict[str, int]:
        return {"active": app.state.active}

    @app.post("/v1/completions")
    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        is_chat = request.url.path.endswith("/chat/completions")
        created, rid = int(time.time()), f"chatcmpl-{time.monotonic_ns()}"
        schema = (body.get("response_format") or {}).get("type") == "json_schema"
        limit = min(tokens, int(body.get("max_tokens") or tokens))

        def chunk(text: str | None, finish: str | None = None,
                  usage: dict[str, int] | None = None) -> str:
            piece: dict[str, Any] = ({"delta": {"content": text} if text else {}}
                                     if is_chat else {"text": text or ""})
            choices = [] if usage else [{"index": 0, **piece, "finish_reason": finish}]
            data: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk",
                                    "created": created, "model": "fixed-rate",
                                    "choices": choices}
            if usage:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        async def stream() -> AsyncIterator[str]:
            app.state.active += 1
            try:
                await asyncio.sleep(ttft_ms / 1000)
                if schema:
                    yield chunk(json.dumps(RELATED), "stop")
                    n = 1
                else:
                    n = 0
                    for n in range(1, limit + 1):
                        word = WORDS[(n - 1) % len(WORDS)]
                        yield chunk(word if n == 1 or word == "." else " " + word,
                                    "length" if n == limit else None)
                        if n < limit:
                            await asyncio.sleep(1 / rate)
                yield chunk(None, usage={"prompt_tokens": 100, "completion_tokens": n,
                                         "total_tokens": 100 + n})
                yield "data: [DONE]\n\n"
            finally:
                app.state.active -= 1

        if not body.get("stream"):
            return JSONResponse({"error": {"message": "only streaming is served",
                                           "type": "invalid_request_error", "code": 400}},
                                status_code=400)
        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=20.0, help="tokens per second")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per answer")
    parser.add_argument("--ttft-ms", type=float, default=100.0)
    args = parser.parse_args()
    app = create_app(rate=args.rate, tokens=args.tokens, ttft_ms=args.ttft_ms)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning",
                backlog=4096, timeout_keep_alive=30)


if __name__ == "__main__":
    main()
