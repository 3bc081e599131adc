"""Upstream engine: any OpenAI-compatible server (a remote ``vllm serve``, Ollama,
llama.cpp's server, a hosted API) behind the same interface as the local engines.

Streaming passes through chunk by chunk; the upstream's errors become ours (its 4xx keep
their status and message, anything else is a 502/504), and closing a stream closes the
upstream connection, which is how vLLM learns to abort. The API key is sent, never
logged. Every call has a timeout.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from serving.engines.base import (
    Engine,
    EngineLoad,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    SamplingOptions,
)
from serving.engines.options import UpstreamOptions
from serving.errors import EngineError, EngineNotReadyError, UpstreamError

__all__ = ["UpstreamEngine"]

log = logging.getLogger(__name__)
DEFAULT_CONTEXT = 8192


def _error_message(response_text: str, status: int) -> str:
    try:
        body = json.loads(response_text)
    except ValueError:
        return response_text.strip()[:500] or f"upstream answered HTTP {status}"
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:500]
    return str(err)[:500]


def _payload(sampling: SamplingOptions) -> dict[str, Any]:
    """OpenAI's fields always; vLLM's extras only when set (hosted APIs reject them)."""
    body: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p}
    if sampling.max_tokens is not None:
        body["max_tokens"] = sampling.max_tokens
    if sampling.stop:
        body["stop"] = sampling.stop
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.presence_penalty:
        body["presence_penalty"] = sampling.presence_penalty
    if sampling.frequency_penalty:
        body["frequency_penalty"] = sampling.frequency_penalty
    for name in ("top_k", "min_p", "repetition_penalty"):
        value = getattr(sampling, name)
        if value is not None:
            body[name] = value
    if sampling.ignore_eos:
        body["ignore_eos"] = True
    if sampling.json_schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "response", "schema": sampling.json_schema, "strict": True}}
    elif sampling.json_object:
        body["response_format"] = {"type": "json_object"}
    return body


@dataclass(frozen=True)
class StreamEvent:
    """What one ``data:`` line of an OpenAI stream says."""

    texts: list[str]
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens
    finish_reason: str | None = None


def parse_stream_event(data: str) -> StreamEvent:
    """One chunk of a chat or text completion stream. Whatever the upstream sends, the
    result is an event or an UpstreamError (502): a server that changed its format or a
    proxy that injected an HTML page must not end an answer with an internal error."""
    try:
        event = json.loads(data)
    except ValueError:
        raise UpstreamError(f"The upstream server sent a malformed stream chunk "
                            f"({len(data)} bytes, not JSON).", status=502) from None
    if not isinstance(event, dict):
        raise UpstreamError("The upstream server sent a stream chunk that is not a JSON "
                            "object.", status=502)
    if "error" in event:
        raise EngineError(f"Upstream error: {_error_message(data, 500)}")
    usage = event.get("usage")
    counts = None
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            counts = (prompt, completion)
    texts: list[str] = []
    finish = None
    choices = event.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            finish = reason
        if isinstance(text, str) and text:
            texts.append(text)
    return StreamEvent(texts, counts, finish)


class UpstreamEngine(Engine):
    def __init__(self, client: httpx.AsyncClient, options: UpstreamOptions, upstream_model: str,
                 info: ModelInfo) -> None:
        self._client = client
        self._options = options
        self._model = upstream_model
        self.info = info
        self._running: dict[str, httpx.Response] = {}
        self._aborted: set[str] = set()

    @classmethod
    async def create(cls, options: UpstreamOptions) -> UpstreamEngine:
        headers = {}
        if options.api_key is not None:
            headers["Authorization"] = f"Bearer {options.api_key.get_secret_value()}"
        timeout = httpx.Timeout(options.timeout_s, connect=options.connect_timeout_s)
        client = httpx.AsyncClient(
            base_url=options.base_url.rstrip("/") + "/", headers=headers, timeout=timeout,
            limits=httpx.Limits(max_connections=options.max_connections,
                                max_keepalive_connections=min(64, options.max_connections)))
        try:
            models = await cls._models(client)
        except BaseException:
            await client.aclose()
            raise
        ids = [m.get("id") for m in models]
        model = options.model or (ids[0] if ids else None)
        if model is None:
            await client.aclose()
            raise EngineNotReadyError(f"The upstream {options.base_url} lists no models; "
                                      "set --model.")
        card = next((m for m in models if m.get("id") == model), {})
        context = (options.context_length or card.get("max_model_len")
                   or card.get("context_length") or card.get("context_window"))
        if not context:
            log.warning("upstream does not report a context length for %s; assuming %d "
                        "(set --context-length)", model, DEFAULT_CONTEXT)
            context = DEFAULT_CONTEXT
        info = ModelInfo(id=options.served_model_name or model, context_length=int(context),
                         engine="openai", owned_by=str(card.get("owned_by", "upstream")))
        log.info("upstream engine: %s model %s (context %d)", options.base_url, model, context)
        return cls(client, options, model, info)

    @staticmethod
    async def _models(client: httpx.AsyncClient) -> list[dict[str, Any]]:
        try:
            response = await client.get("models")
        except httpx.HTTPError as exc:
            raise EngineNotReadyError(f"Upstream server unreachable: {type(exc).__name__}: "
                                      f"{exc}") from exc
        if response.status_code != 200:
            raise UpstreamError(_error_message(response.text, response.status_code),
                                status=response.status_code)
        data = response.json().get("data", [])
        return [m for m in data if isinstance(m, dict)]

    @property
    def load(self) -> EngineLoad:
        return EngineLoad(running=len(self._running), waiting=0)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        body = {"model": self._model, "stream": True,
                "stream_options": {"include_usage": True}, **_payload(request.sampling)}
        if request.messages is not None:
            path, body["messages"] = "chat/completions", request.messages
        else:
            path, body["prompt"] = "completions", request.prompt
        try:
            async with self._client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode("utf-8", "replace")
                    raise UpstreamError(_error_message(text, response.status_code),
                                        status=response.status_code)
                self._running[request.request_id] = response
                async for chunk in self._chunks(response):
                    if request.request_id in self._aborted:
                        return
                    yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"The upstream server timed out ({type(exc).__name__}).",
                                status=504) from exc
        except (httpx.HTTPError, httpx.StreamError) as exc:
            if request.request_id in self._aborted:
                return  # abort() closed the response: the stream ends quietly
            raise UpstreamError(f"The upstream server failed: {type(exc).__name__}: {exc}",
                                status=502) from exc
        finally:
            self._running.pop(request.request_id, None)
            self._aborted.discard(request.request_id)

    async def _chunks(self, response: httpx.Response) -> AsyncIterator[GenerationChunk]:
        prompt_tokens = completion_tokens = 0
        finish: str | None = None
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = parse_stream_event(data)
            if event.usage is not None:
                prompt_tokens, completion_tokens = event.usage
            finish = event.finish_reason or finish
            for text in event.texts:
                completion_tokens += 1  # corrected by the usage chunk at the end
                yield GenerationChunk(text, prompt_tokens, completion_tokens)
        # The last chunk carries the finish reason and the upstream's exact usage.
        yield GenerationChunk("", prompt_tokens, completion_tokens,
                              "length" if finish == "length" else "stop")

    async def abort(self, request_id: str) -> None:
        """Close the upstream response (that is how vLLM learns to abort); the stream
        then ends without a finish reason, as on the other engines."""
        response = self._running.pop(request_id, None)
        if response is not None:
            self._aborted.add(request_id)
            await response.aclose()

    async def count_tokens(self, text: str) -> int:
        """The upstream's ``/tokenize`` (vLLM, llama.cpp) when it has one, else ~4 chars/token."""
        root = str(self._client.base_url).rstrip("/").removesuffix("/v1")
        try:
            response = await self._client.post(f"{root}/tokenize",
                                               json={"model": self._model, "prompt": text,
                                                     "add_special_tokens": False},
                                               timeout=10.0)
            if response.status_code == 200:
                body = response.json()
                if "count" in body:
                    return int(body["count"])
                if "tokens" in body:
                    return len(body["tokens"])
        except (httpx.HTTPError, ValueError):
            pass
        return max(1, len(text) // 4)

    async def aclose(self) -> None:
        await self._client.aclose()
