"""The llama.cpp decode loop: one thread, one context, many sequences per ``llama_decode``.

Why a dedicated thread: a llama.cpp context is not thread-safe and ``llama_decode``
blocks for milliseconds, so exactly one thread owns the context and everything that
touches it (batch, KV memory, sampling). The asyncio side only appends to a locked
queue and receives chunks through ``loop.call_soon_threadsafe``, once per decode step
and loop, so the event loop is never blocked and never woken once per token per request.

Each step packs, in this order, into one ``llama_batch`` of at most ``n_batch`` tokens:

1. every generating sequence's last sampled token, plus prompt-lookup draft tokens when
   enabled (all with logits);
2. one prompt chunk for each newly admitted sequence, first come first served, while
   whole chunks fit. Prompts are always cut at the same places (after every end-of-turn
   token, every ``prefill_chunk`` tokens, and before the last token), because llama.cpp
   computes a token slightly differently in a small ubatch than in a large one; a free
   slot keeps its last prompt's KV, and a new request sharing a prefix reuses it up to a
   common cut. Cutting at turn ends is what lets chats reuse a shared system prompt
   (or a chat's earlier turns) however short it is.

After the decode every sequence samples with its own sampler chain. Drafts are verified
by sampling at each drafted position and accepting while the sample equals the draft:
the same sampler calls and RNG draws as plain decoding, on logits that the engine's
context settings keep bit-identical to plain decoding's (see ``_new_context``), so the
output is exactly the same. Rejected positions are removed with ``llama_memory_seq_rm``.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from serving.engines.base import FinishReason, GenerationChunk
from serving.errors import EngineError, EngineNotReadyError, OverloadedError

__all__ = ["ABORTED", "BatchWorker", "PromptLookup", "Sequence", "StopMatcher", "ThreadTuner"]

logger = logging.getLogger(__name__)

# Prompt lookup: n-gram sizes tried, longest first. Shorter matches are too weak a
# signal on a CPU, where verifying even one extra token costs about a decode step.
LOOKUP_MAX_NGRAM = 4
LOOKUP_MIN_NGRAM = 3
# Drafting pays only for long accepted runs on a CPU: a step with 2 tokens of one
# sequence costs about 2x a 1-token step (the batched matmul path), 5 tokens 3x, 9
# tokens 5x. So drafts shorter than DRAFT_MIN are dropped, the draft length follows
# the last run (accepted + 1, doubling after a full hit), and a sequence whose draft
# was rejected outright waits DRAFT_PAUSE tokens before drafting again, twice as long
# after each further miss (text that quotes nothing soon stops paying for drafts).
DRAFT_MIN = 3
DRAFT_PAUSE = 8
# Thread tuning: how often the machine's load is re-read, and how much of a core others
# may be using before we give that core up (0.25: a core that is 75% free still counts).
TUNE_INTERVAL_S = 0.5
TUNE_FREE_CORE_SLACK = 0.25
# Prompts are cut after end-of-turn tokens, except the last turn's end when only the
# generation prompt ("<|im_start|>assistant\n" and the like, a few tokens) follows it:
# that cut would cost a separate tiny decode call on every request, to save a repeat.
GENERATION_PROMPT_MAX = 8
# How long the worker sleeps when idle before re-checking its queues (it is woken early
# on every submission, abort and shutdown).
IDLE_WAIT_S = 0.5

ABORTED = object()  # sentinel delivered to an aborted request's queue: the stream ends


class StopMatcher:
    """Cuts the text at the first stop string, holding back a possible partial match.

    Why hold back: a stop string can arrive split over several tokens; text that could
    be its beginning is kept until the next token settles it, so no stop string (or
    piece of one) is ever streamed.
    """

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, whether a stop string was hit)."""
        buf = self._held + text
        cut = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return buf[:cut], True
        hold = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self._held = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


class PromptLookup:
    """N-gram index over a sequence's prompt and output that proposes draft tokens.

    ``_index[n]`` maps each n-gram to the position right after its latest occurrence
    whose continuation is known, so a lookup is O(1) per n-gram size and appending a
    token costs one dict update per size: no per-step scan of the whole history.
    """

    def __init__(self, tokens: list[int]) -> None:
        self.tokens: list[int] = []
        self._index: dict[int, dict[tuple[int, ...], int]] = {
            n: {} for n in range(LOOKUP_MIN_NGRAM, LOOKUP_MAX_NGRAM + 1)}
        for tok in tokens:
            self.append(tok)

    def append(self, token: int) -> None:
        toks = self.tokens
        i = len(toks)
        for n, index in self._index.items():
            if i >= n:
                index[tuple(toks[i - n:i])] = i
        toks.append(token)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest earlier match of the tail."""
        toks = self.tokens
        for n in range(LOOKUP_MAX_NGRAM, LOOKUP_MIN_NGRAM - 1, -1):
            if len(toks) <= n:
                continue
            j = self._index[n].get(tuple(toks[-n:]))
            if j is not None:
                return toks[j:j + k]
        return []


class ThreadTuner:
    """Chooses the threads of multi-token ``llama_decode`` steps from the spare cores.

    Why: ggml's CPU threads meet at spinning barriers. On an idle 2-core machine two
    threads run a batch about 1.6x faster than one, but when another process takes a
    core (retrieval, the HTTP layer, a benchmark client) a descheduled thread stalls the
    other and a step gets about 10x slower (measured: 90 ms instead of 9 ms). Probing
    the slow setting to find out costs seconds, so instead the CPU time that others used
    (``/proc/stat`` busy time minus ours) is read every ``TUNE_INTERVAL_S`` and only the
    cores they leave free are used. Ours is the worker thread's CPU time plus, for each
    step, its wall time per helper thread (helpers work or spin as long as the step).
    """

    def __init__(self, max_threads: int, *, fixed: bool = False) -> None:
        self.max_threads = max_threads
        self.threads = max_threads
        self._fixed = fixed or max_threads == 1 or not os.path.exists("/proc/stat")
        self._cores = os.cpu_count() or 1
        self._tick = os.sysconf("SC_CLK_TCK") if not self._fixed else 100
        self._last: tuple[float, float, float] | None = None
        self._helper_s = 0.0
        self._next = 0.0

    def account(self, threads: int, seconds: float) -> None:
        """Record a decode step that ran ``threads`` threads for ``seconds``."""
        if threads > 1:
            self._helper_s += (threads - 1) * seconds

    def choose(self, now: float) -> int:
        """Call from the worker thread (its CPU time is part of ours)."""
        if self._fixed or now < self._next:
            return self.threads
        self._next = now + TUNE_INTERVAL_S
        try:
            with open("/proc/stat", "rb") as f:
                jiffies = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            self._fixed = True
            return self.threads
        busy = (sum(jiffies) - jiffies[3] - jiffies[4]) / self._tick  # minus idle, iowait
        sample = (now, busy, time.thread_time() + self._helper_s)
        if self._last is not None and now > self._last[0]:
            wall = now - self._last[0]
            others = max(0.0, (busy - self._last[1] - (sample[2] - self._last[2])) / wall)
            free = self._cores - others
            self.threads = max(1, min(self.max_threads, int(free + TUNE_FREE_CORE_SLACK)))
        self._last = sample
        return self.threads


@dataclass(eq=False)
class Sequence:
    """One request's state. Loop-side fields first; the rest belong to the worker."""

    request_id: str
    prompt: list[int]
    max_tokens: int
    sampler: Any  # llama_sampler*; owned (freed) by whoever holds the sequence last
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    stop: StopMatcher | None = None
    # Instead of the queue: called in the worker thread with one step's items (see
    # LlamaCppEngine.submit); the engine process forwards them without waking its loop.
    sink: Callable[[list[tuple[Sequence, Any]]], None] | None = None
    lookup: PromptLookup | None = None
    ignore_eos: bool = False
    done: bool = False  # set by the worker once the last item is queued
    # worker-only state
    slot: int = -1
    n_past: int = 0  # tokens in the KV memory
    last_token: int | None = None  # sampled but not yet decoded
    out_idx: int = -1  # batch index of the first output this step (-1: none)
    drafts: list[int] = field(default_factory=list)
    draft_len: int = 0  # current draft length (0: not started)
    draft_pause: int = 0  # steps left before drafting again
    draft_misses: int = 0  # drafts rejected outright in a row
    completion_tokens: int = 0
    output: list[int] = field(default_factory=list)  # sampled tokens
    bounds: list[int] = field(default_factory=list)  # where prompt chunks ended
    cuts: list[int] = field(default_factory=list)  # where its prompt chunks must end
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    def free_sampler(self) -> None:
        if self.sampler is not None:
            llama_cpp.llama_sampler_free(self.sampler)
            self.sampler = None


class BatchWorker:
    """Owns the llama.cpp context and runs the continuous-batching loop in a thread."""

    def __init__(self, *, model: Any, ctx: Any, vocab: Any, n_batch: int, n_seq_max: int,
                 max_queue: int, draft_tokens: int, prefill_chunk: int,
                 gen_threads: int, tuner: ThreadTuner, turn_ends: frozenset[int]) -> None:
        self._model, self._ctx, self._vocab = model, ctx, vocab
        # End-of-turn tokens (<|im_end|>, <|eot_id|>, ...): prompts are also cut after
        # them, so a shared system prompt or earlier turns are a reusable prefix.
        self._turn_ends = turn_ends
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._n_batch = n_batch
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._n_seq_max = n_seq_max
        self._max_queue = max_queue
        self._k = draft_tokens
        self._chunk = prefill_chunk
        # Single-token steps use a fixed thread count (see LlamaCppEngine._new_context);
        # multi-token steps use what the tuner allows.
        self._gen_threads = gen_threads
        self._tuner = tuner
        self._batch_threads = 0  # last value given to llama.cpp
        # Free slots, least recently released first, with the prompt tokens whose KV
        # each one still holds and where their chunks ended: a new request takes the
        # slot sharing its longest prompt prefix and skips recomputing it (a repeated
        # prompt, the same system prompt or sources, a chat's earlier turns).
        self._free_slots = list(range(n_seq_max))
        self._cached: dict[int, tuple[list[int], list[int]]] = {}
        self._active: list[Sequence] = []
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        # prompt-lookup counters, for metrics and tests (worker writes, others read)
        self.stats = {"drafted": 0, "accepted": 0, "cached_prompt_tokens": 0}
        # shared with the event loop, guarded by _lock
        self._lock = threading.Lock()
        self._waiting: deque[Sequence] = deque()
        self._aborts: dict[str, list[Future[None]]] = {}
        self._n_running = 0
        self._closing = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llamacpp-batch", daemon=True)

    # ---- called from the event loop -----------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def load(self) -> tuple[int, int]:
        with self._lock:
            return self._n_running, len(self._waiting)

    def position(self, request_id: str) -> int | None:
        """Sequences ahead of ``request_id`` in the waiting queue; None if not waiting."""
        with self._lock:
            for i, seq in enumerate(self._waiting):
                if seq.request_id == request_id:
                    return i
        return None

    def is_full(self) -> bool:
        with self._lock:
            return self._n_running + len(self._waiting) >= self._n_seq_max + self._max_queue

    def submit(self, seq: Sequence) -> None:
        """Queue a sequence (FIFO) or raise: the queue is bounded for back-pressure."""
        with self._lock:
            if self._closing:
                raise EngineNotReadyError("The llama.cpp engine is shutting down.")
            if self._n_running + len(self._waiting) >= self._n_seq_max + self._max_queue:
                raise OverloadedError(
                    f"The server is busy ({self._n_running} running, {len(self._waiting)} "
                    "waiting). Please retry later.")
            self._waiting.append(seq)
        self._wake.set()

    def abort(self, request_id: str) -> Future[None]:
        """Ask the worker to drop a request; the future resolves once it is gone."""
        fut: Future[None] = Future()
        with self._lock:
            for seq in self._waiting:  # never admitted: drop it here and now
                if seq.request_id == request_id:
                    self._waiting.remove(seq)
                    seq.free_sampler()
                    self._finish_silently(seq)
                    fut.set_result(None)
                    return fut
            self._aborts.setdefault(request_id, []).append(fut)
        self._wake.set()
        return fut

    def close(self, timeout: float) -> None:
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise EngineError("the llama.cpp worker did not stop in time")

    # ---- worker thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                try:
                    if not self._sync():
                        break
                    if not self._active:
                        self._tuner.choose(time.monotonic())  # keep the load reading fresh
                        self._wake.wait(IDLE_WAIT_S)
                        self._wake.clear()
                        continue
                    self._step()
                except Exception as exc:  # keep serving: fail what was in flight
                    logger.exception("llama.cpp batch step failed")
                    for seq in list(self._active):
                        self._finish(seq, error=EngineError(f"llama.cpp failed: {exc}"))
        finally:
            self._shutdown()

    def _sync(self) -> bool:
        """Apply aborts and admit waiting sequences; False once the engine is closing."""
        with self._lock:
            if self._closing:
                return False
            aborts, self._aborts = self._aborts, {}
            n = min(len(self._waiting), len(self._free_slots))
            admitted = [self._waiting.popleft() for _ in range(n)]
            self._n_running += n
        for seq in admitted:
            self._admit(seq)
        for request_id, futures in aborts.items():
            for seq in [s for s in self._active if s.request_id == request_id]:
                self._finish(seq, aborted=True)
            for fut in futures:
                fut.set_result(None)
        return True

    def _admit(self, seq: Sequence) -> None:
        """Give the sequence the free slot whose cache saves it the most prompt work."""
        best, keep = self._free_slots[0], 0
        seq.cuts = self._prompt_bounds(seq.prompt)
        for slot in self._free_slots:
            tokens, bounds = self._cached.get(slot, ([], []))
            n = self._reusable(seq.prompt, seq.cuts, tokens, bounds)
            if n > keep:
                best, keep = slot, n
        self._free_slots.remove(best)
        self._cached.pop(best, None)
        if not llama_cpp.llama_memory_seq_rm(self._mem, best, keep, -1):
            llama_cpp.llama_memory_seq_rm(self._mem, best, -1, -1)
            keep = 0
        seq.slot, seq.n_past = best, keep
        seq.bounds = [b for b in seq.cuts if b <= keep]
        self.stats["cached_prompt_tokens"] += keep
        self._active.append(seq)

    def _prompt_bounds(self, prompt: list[int]) -> list[int]:
        """Where a prompt is always cut: after every end-of-turn token (but the one
        just before the generation prompt), every ``prefill_chunk`` tokens, and before
        its last token, which is decoded alone. The cuts depend only on the prompt, so a
        prompt is cut the same way every time, and two prompts that share a prefix up
        to a turn end (a system prompt, a chat's earlier turns) share their cuts there.

        Why fixed cuts: llama.cpp computes a token in a small ubatch slightly
        differently (up to ~1 in logits past ~400 tokens of context) than in a large
        one, so a prompt must be cut the same way whether it starts from scratch or
        from a cached prefix, or a repeated seeded request would not repeat itself.
        """
        n = len(prompt)
        if n <= 1:
            return [n]
        cuts, start = [], 0
        for i, token in enumerate(prompt[:n - 1]):
            turn_end = token in self._turn_ends and n - 1 - (i + 1) > GENERATION_PROMPT_MAX
            if i + 1 < n - 1 and (i + 1 - start == self._chunk or turn_end):
                cuts.append(i + 1)
                start = i + 1
        return cuts + [n - 1, n]

    def _reusable(self, prompt: list[int], cuts: list[int], tokens: list[int],
                  bounds: list[int]) -> int:
        """Cached prompt tokens usable as is: up to the last cut that both the cached
        prompt and this one made, with the same cuts before it and the same tokens."""
        same = _common_prefix(tokens, prompt)
        keep = 0
        for old, new in zip(bounds, cuts[:-1], strict=False):
            if old != new or new > same:
                break
            keep = new
        return keep

    def _add(self, i: int, token: int, pos: int, slot: int, logits: bool) -> None:
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = slot
        b.logits[i] = logits

    @staticmethod
    def _next_cut(seq: Sequence) -> int:
        return next(c for c in seq.cuts if c > seq.n_past)

    def _step(self) -> None:
        decoding = [s for s in self._active if s.last_token is not None]
        prefilling = [s for s in self._active if s.last_token is None]
        # One token per decoding sequence and the first waiting prompt chunk always
        # fit (n_batch >= parallel + prefill_chunk); drafts get what is left.
        spare = self._n_batch - len(decoding)
        if prefilling:
            spare -= self._next_cut(prefilling[0]) - prefilling[0].n_past
        used = len(decoding)
        for seq in decoding:
            seq.drafts = []
            if seq.lookup is not None and spare >= DRAFT_MIN:
                if seq.draft_pause > 0:
                    seq.draft_pause -= 1
                    continue
                room = min(seq.draft_len or self._k, spare,
                           seq.max_tokens - seq.completion_tokens - 1)
                drafts = seq.lookup.draft(room) if room >= DRAFT_MIN else []
                if len(drafts) >= DRAFT_MIN:
                    seq.drafts = drafts
                    spare -= len(drafts)
                    used += len(drafts)
                    self.stats["drafted"] += len(drafts)
        chunks: dict[int, int] = {}  # id(seq) -> end of its prompt chunk this step
        for seq in prefilling:  # first come, first served: one whole chunk each
            end = self._next_cut(seq)
            if end - seq.n_past > self._n_batch - used:
                break
            chunks[id(seq)] = end
            used += end - seq.n_past
        # Into the batch in slot order: llama.cpp splits a batch whose sequences (one KV
        # stream each) come out of order into more ubatches (measured: c=4 decoded 25 %
        # slower once slots had been handed out in another order).
        n = 0
        for seq in sorted(self._active, key=lambda s: s.slot):
            seq.out_idx = -1
            if seq.last_token is not None:
                seq.out_idx = n
                self._add(n, seq.last_token, seq.n_past, seq.slot, True)
                n += 1
                for j, tok in enumerate(seq.drafts, 1):
                    self._add(n, tok, seq.n_past + j, seq.slot, True)
                    n += 1
            elif id(seq) in chunks:
                end = chunks[id(seq)]
                for pos in range(seq.n_past, end):
                    self._add(n, seq.prompt[pos], pos, seq.slot, False)
                    n += 1
                seq.n_past = end
                seq.bounds.append(end)
                if end == len(seq.prompt):
                    self._batch.logits[n - 1] = True
                    seq.out_idx = n - 1
        self._batch.n_tokens = n
        start = time.monotonic()
        batch_threads = self._tuner.choose(start)
        if batch_threads != self._batch_threads:
            llama_cpp.llama_set_n_threads(self._ctx, self._gen_threads, batch_threads)
            self._batch_threads = batch_threads
        rc = llama_cpp.llama_decode(self._ctx, self._batch)
        self._tuner.account(self._gen_threads if n == 1 else batch_threads,
                            time.monotonic() - start)
        if rc != 0:
            # 1: no KV room; 2: aborted; <0: invalid batch or fatal. Positions of this
            # batch may be half-written, so none of these sequences can continue.
            for seq in decoding + prefilling:
                self._finish(seq, error=EngineError(f"llama_decode failed (code {rc})"))
            return
        outbox: list[tuple[Sequence, Any]] = []
        for seq in decoding + prefilling:
            if seq.out_idx < 0:
                continue
            try:
                self._sample(seq, outbox)
            except Exception as exc:
                logger.exception("sampling failed for %s", seq.request_id)
                self._finish(seq, error=EngineError(f"sampling failed: {exc}"))
        self._deliver(outbox)

    def _sample(self, seq: Sequence, outbox: list[tuple[Sequence, Any]]) -> None:
        """Sample (and verify drafts), then stream the accepted group as one chunk."""
        drafts = seq.drafts
        text: list[str] = []
        finish: FinishReason | None = None
        accepted = 0
        ctx, smpl = self._ctx, seq.sampler
        for j in range(len(drafts) + 1):
            tok = llama_cpp.llama_sampler_sample(smpl, ctx, seq.out_idx + j)
            finish = self._accept(seq, tok, text)
            if finish is not None or j == len(drafts) or tok != drafts[j]:
                break
            accepted += 1
        if seq.last_token is not None:  # it and the accepted drafts are now in the KV
            seq.n_past += 1 + accepted
            if accepted < len(drafts):
                llama_cpp.llama_memory_seq_rm(self._mem, seq.slot, seq.n_past, -1)
        seq.last_token = tok
        if drafts:
            self.stats["accepted"] += accepted
            if accepted == len(drafts):
                seq.draft_len, seq.draft_misses = min(self._k, 2 * accepted), 0
            else:
                seq.draft_len = max(DRAFT_MIN, min(self._k, accepted + 1))
                seq.draft_misses = seq.draft_misses + 1 if accepted == 0 else 0
                if accepted == 0:
                    seq.draft_pause = DRAFT_PAUSE << min(seq.draft_misses - 1, 4)
        seq.drafts = []
        chunk_text = "".join(text)
        if finish is not None:
            outbox.append((seq, GenerationChunk(chunk_text, len(seq.prompt),
                                                seq.completion_tokens, finish)))
            self._finish(seq)
        elif chunk_text:
            outbox.append((seq, GenerationChunk(chunk_text, len(seq.prompt),
                                                seq.completion_tokens)))

    def _accept(self, seq: Sequence, tok: int, text: list[str]) -> FinishReason | None:
        """Account one sampled token; append its visible text; say why it ends, if so."""
        seq.completion_tokens += 1
        seq.output.append(tok)
        if seq.lookup is not None:
            seq.lookup.append(tok)
        if not seq.ignore_eos and llama_cpp.llama_vocab_is_eog(self._vocab, tok):
            text.append(self._tail(seq))
            return "stop"
        piece = self._pieces.get(tok)
        if piece is None:
            piece = self._pieces[tok] = self._piece(tok)
        new = seq.decoder.decode(piece)
        if seq.stop is not None:
            new, hit = seq.stop.feed(new)
            if hit:
                text.append(new)
                return "stop"
        text.append(new)
        if seq.completion_tokens >= seq.max_tokens:
            text.append(self._tail(seq))
            return "length"
        return None

    @staticmethod
    def _tail(seq: Sequence) -> str:
        """Text still held back (undecoded bytes, a partial stop match) at the end."""
        rest = seq.decoder.decode(b"", final=True)
        if seq.stop is not None:
            rest, hit = seq.stop.feed(rest)
            if hit:
                return rest
            return rest + seq.stop.flush()
        return rest

    def _piece(self, tok: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(self._vocab, tok, self._piece_buf,
                                           len(self._piece_buf), 0, False)
        if n < 0:
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, tok, self._piece_buf, -n, 0,
                                               False)
        return self._piece_buf.raw[:n]

    def _finish(self, seq: Sequence, *, error: BaseException | None = None,
                aborted: bool = False) -> None:
        """Free the sequence's slot and sampler; tell its consumer if needed.

        Between steps the slot's KV holds exactly ``(prompt + output)[:n_past]``, so its
        prompt part stays as a prefix cache; after an error its state is unknown and
        is cleared.
        """
        if seq in self._active:
            self._active.remove(seq)
            if error is None:  # keep the prompt part (output tokens were cut differently)
                self._cached[seq.slot] = (seq.prompt[:seq.bounds[-1] if seq.bounds else 0],
                                          seq.bounds)
            else:
                llama_cpp.llama_memory_seq_rm(self._mem, seq.slot, -1, -1)
            self._free_slots.append(seq.slot)
            with self._lock:
                self._n_running -= 1
        seq.free_sampler()
        if error is not None or aborted:
            self._deliver([(seq, error if error is not None else ABORTED)])
        seq.done = True

    def _finish_silently(self, seq: Sequence) -> None:
        """A request dropped before admission: end its stream (caller holds the lock)."""
        seq.done = True
        if seq.sink is not None:
            seq.sink([(seq, ABORTED)])
        else:
            self._post(seq.loop, [(seq, ABORTED)])

    def _deliver(self, items: list[tuple[Sequence, Any]]) -> None:
        """Push items to their consumers: one thread-safe call per event loop (or one
        sink call per sink) per step."""
        if not items:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Sequence, Any]]] = {}
        by_sink: dict[Any, list[tuple[Sequence, Any]]] = {}
        for item in items:
            if item[0].sink is not None:
                by_sink.setdefault(item[0].sink, []).append(item)
            else:
                by_loop.setdefault(item[0].loop, []).append(item)
        for sink, batch in by_sink.items():
            try:
                sink(batch)
            except Exception:  # nobody is listening any more: stop those sequences
                logger.exception("a sink failed; its sequences are stopped")
                for seq, _ in batch:
                    if seq in self._active:
                        self._finish(seq)
        for loop, batch in by_loop.items():
            if not self._post(loop, batch):  # loop closed: nobody is listening
                for seq, _ in batch:
                    if seq in self._active:
                        self._finish(seq)

    @staticmethod
    def _post(loop: asyncio.AbstractEventLoop, items: list[tuple[Sequence, Any]]) -> bool:
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:
            return False
        return True

    def _shutdown(self) -> None:
        error = EngineNotReadyError("The llama.cpp engine was shut down.")
        with self._lock:
            self._closing = True
            waiting, self._waiting = list(self._waiting), deque()
            aborts, self._aborts = self._aborts, {}
        for seq in waiting:
            seq.free_sampler()
            self._deliver([(seq, error)])
        for seq in list(self._active):
            self._finish(seq, error=error)
        for futures in aborts.values():
            for fut in futures:
                fut.set_result(None)
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        llama_cpp.llama_model_free(self._model)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _put_all(items: list[tuple[Sequence, Any]]) -> None:
    for seq, item in items:
        seq.queue.put_nowait(item)

