"""All configuration, in one place: environment variables (prefix ``SEARCH_APP_``), an
optional ``.env`` file, and CLI flags that override both.

This is the only module that reads the environment. Everything else receives typed
options built from :class:`Settings` (the serving layer gets ``ServerOptions``), so
tests build apps from explicit values and nothing changes behind their back.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from retrieval.providers import ProviderOptions
from retrieval.reader import ReaderOptions
from search_app.models import resolve_model
from search_app.pipeline import PipelineOptions
from serving.app import ServerOptions
from serving.engines import (
    EngineOptions,
    LlamaCppOptions,
    ProcessOptions,
    UpstreamOptions,
    VLLMOptions,
)

__all__ = ["ENV_PREFIX", "Settings"]

ENV_PREFIX = "SEARCH_APP_"


def _split(value: Any) -> Any:
    """Lists from the environment are comma-separated (``a,b``) or JSON (``["a","b"]``)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env",
                                      env_file_encoding="utf-8", extra="ignore")

    # --- server ---
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level.")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Keys required on every face that spends compute or provider keys "
                    "(/api, /query, /searxng, /v1): API clients send `Authorization: "
                    "Bearer`, browsers sign in at /login (comma-separated in the "
                    "environment; repeat --api-key). Empty: no auth.")
    store_url: SecretStr | None = Field(
        None, description="PostgreSQL URL of the answer store (postgresql://user:pass@host"
                          "/db), shared by replicas; default: the SQLite file (store_path).")
    redis_url: SecretStr | None = Field(
        None, description="Redis URL (redis://host:6379/0): rate limits and stream caps "
                          "shared by replicas; default: in this process.")
    multi_user: bool = Field(
        False, description="Accounts: users made with `search-app users add` sign in with "
                           "a password (or send their own API key); each sees only their "
                           "own history and threads.")
    session_secret: SecretStr | None = Field(
        None, description="Signs browser sessions; default: derived from the API keys "
                          "(new keys sign everybody out).")
    session_max_age_s: int = Field(7 * 24 * 3600, ge=60,
                                   description="Browser sessions expire after this long.")
    protect_metrics: bool = Field(
        False, description="With API keys, require one on /metrics too (/health stays "
                           "open for load balancers).")
    public_share_links: bool = Field(
        True, description="With API keys, share links (/s/ID and GET /api/search/ID) "
                          "still open without one.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS (comma-separated).")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024,
                                description="Largest request body accepted (413 above).")
    max_generation_s: float = Field(
        600.0, ge=0, description="/v1 completions: a generation running longer ends with "
                                 "finish_reason `length` (0: no cap).")
    data_dir: Path = Field(Path("data"), description="Where indexes, caches and the store live.")
    models_dir: Path | None = Field(
        None, description="Where `search-app models pull` puts models and --model NAME "
                          "finds them; default: <data_dir>/models.")

    # --- engine ---
    engine: Literal["auto", "vllm", "llamacpp", "openai"] = Field(
        "auto", description="auto: vLLM with a CUDA GPU, else llama.cpp; openai: upstream URL.")
    model: str | None = Field(
        None, description="llama.cpp: a GGUF file (default SmolLM2-135M-Instruct); vLLM: a "
                          "Hugging Face id or folder; openai: the upstream model name.")
    served_model_name: str | None = Field(None, description="Model id clients use.")
    context_length: int | None = Field(
        None, ge=128, description="Context tokens per request (vLLM max_model_len; "
                                  "llama.cpp per-sequence context, default 4096).")
    parallel: int = Field(4, ge=1, le=64,
                          description="llama.cpp: sequences decoded together in one batch.")
    max_queue: int = Field(64, ge=0, description="llama.cpp: queued requests before 429.")
    threads: int | None = Field(None, ge=1, description="llama.cpp: CPU threads.")
    gpu_layers: int = Field(0, description="llama.cpp: layers offloaded to a GPU (-1 all).")
    prompt_lookup_tokens: int = Field(
        0, ge=0, le=16,
        description="llama.cpp: prompt-lookup speculative decoding draft length (0 off).")
    isolate_engine: bool = Field(
        True, description="llama.cpp: run the engine in a supervised child process, so a "
                          "crash (segfault, OOM kill) fails only the answers in flight and "
                          "the engine restarts; off: in the app's process.")
    engine_restart_backoff_s: float = Field(
        0.5, gt=0, le=60, description="llama.cpp in a child process: first restart delay "
                                      "after a crash (doubles on repeated crashes, up to "
                                      "30 s).")
    llama_amx: bool = Field(
        False, description="llama.cpp: use its AMX kernels on Intel AMX CPUs (they crash "
                           "on some; scripts/setup.sh also builds with AMX when set).")
    default_model_copy: bool = Field(
        False, description="llama.cpp, no --model: serve a Q8_0 copy of the packaged "
                           "SmolLM2 Q4_1, made once in the models folder (prompts prefill "
                           "faster on x86 CPUs; answers not shown equal: "
                           "docs/benchmarks.md); off: the packaged file as is.")
    default_model_copy_dir: Path | None = Field(
        None, description="Where that copy is kept (default: the models folder); one "
                          "folder can serve several data folders.")
    dtype: str = Field("auto", description="vLLM: weights dtype (auto, float16, bfloat16, "
                                           "float32).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM: GPU memory share.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs per model.")
    enforce_eager: bool = Field(False, description="vLLM: no CUDA graphs / compile (fast start).")
    max_num_seqs: int | None = Field(None, ge=1, description="vLLM: max concurrent sequences.")
    speculative_config: dict[str, Any] | None = Field(
        None, description='vLLM speculative decoding, JSON, e.g. {"method": "ngram", '
                          '"num_speculative_tokens": 4, "prompt_lookup_max": 4}.')
    upstream_url: str | None = Field(
        None, description="openai engine: base URL of an OpenAI-compatible server (…/v1).")
    upstream_api_key: SecretStr | None = Field(None, description="openai engine: its API key.")
    upstream_timeout_s: float = Field(600.0, gt=0, description="openai engine: read timeout.")
    embedding_model: str | None = Field(
        "all-MiniLM-L6-v2", description="Sentence-transformers model for /v1/embeddings "
                                        "(id or folder); empty: none.")
    device: str = Field("auto", description="Embeddings device: auto, cpu, cuda.")

    # --- retrieval ---
    provider: str = Field(
        "local", description="Search providers in fallback order, comma-separated: local, "
                             "searxng, brave, google, serper, searchapi, tavily.")
    search_timeout_s: float = Field(5.0, gt=0, description="Timeout of one search call.")
    searxng_url: str | None = Field(None, description="SearXNG base URL (JSON enabled).")
    brave_api_key: SecretStr | None = Field(None, description="Brave Search API key.")
    google_api_key: SecretStr | None = Field(None, description="Google Custom Search key.")
    google_cx: str | None = Field(None, description="Google Programmable Search engine id.")
    serper_api_key: SecretStr | None = Field(None, description="Serper API key.")
    searchapi_api_key: SecretStr | None = Field(None, description="SearchApi API key.")
    tavily_api_key: SecretStr | None = Field(None, description="Tavily API key.")
    read_budget_s: float = Field(3.0, gt=0, description="Time to read all pages of a question.")
    page_timeout_s: float = Field(2.5, gt=0, description="Time to read one page.")
    read_max_pages: int = Field(8, ge=0, description="Top results whose pages are read.")
    fetch_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts or CIDR ranges the page reader may reach despite SSRF rules "
                    "(comma-separated, e.g. 127.0.0.1/32,docs.internal).")

    # --- answer engine ---
    store_path: Path | None = Field(
        None, description="SQLite file of stored answers and threads; default: "
                          "<data_dir>/store.sqlite.")
    answer_sources: int = Field(8, ge=1, le=20, description="Search results per question.")
    answer_max_tokens: int = Field(
        384, ge=16, description="Tokens kept for the answer (at most 1/4 of the context).")
    answer_context_tokens: int | None = Field(
        None, ge=64, description="Most tokens of sources packed into the prompt (default: "
                                 "what the context window leaves). Less context, shorter "
                                 "prefill: the first sentence comes sooner on a CPU.")
    relevance_threshold: float | None = Field(
        None, ge=-1, le=1,
        description="Best passage's MiniLM cosine below which the answer abstains. Empty "
                    "or 'auto': 0.52 for web providers, and for the local index a value "
                    "calibrated on it at start-up (search_app/calibration.py); a number "
                    "fixes it for all.")
    grounding: Literal["strict", "mark", "off"] = Field(
        "strict", description="strict: a sentence reaches the reader only if it passes the "
                              "support check (rejected ones are withheld, listed in the "
                              "support event); mark: all are sent, unsupported ones marked; "
                              "off: no check. Every face (API, /query, OpenAI, UI, ask).")
    lead: bool = Field(
        True, description="Open every answer with the sources' own words: the sentence "
                          "(or two) of the ranked passages that answers the question, "
                          "quoted and cited, sent before the model writes (the quote "
                          "event; a Markdown block quote in the text). Turn it off when "
                          "the model is strong enough that the quote only repeats it, or "
                          "for sources whose sentences do not stand alone "
                          "(docs/search-api.md#the-lead).")
    support_threshold: float = Field(
        0.8, ge=-1, le=1, description="MiniLM cosine a sentence needs to its sources to "
                                       "count as supported.")
    rank_timeout_s: float = Field(10.0, gt=0, description="Ranking budget per question.")
    first_token_timeout_s: float = Field(30.0, gt=0,
                                         description="Wait for the answer's first token.")
    answer_timeout_s: float = Field(90.0, gt=0, description="Whole answer budget.")
    related_timeout_s: float = Field(20.0, gt=0, description="Related questions budget.")
    research_max_steps: int = Field(
        4, ge=1, le=8, description="Research mode: most sub-questions the plan may have.")
    research_max_pages: int = Field(
        12, ge=1, le=50, description="Research mode: most pages (search results) read over "
                                     "all sub-questions.")
    research_timeout_s: float = Field(
        600.0, gt=0, description="Research mode: the whole report's budget (plan, "
                                 "searches, reading, every section).")
    research_section_tokens: int = Field(
        192, ge=32, description="Research mode: tokens per section of the report.")
    sse_ping_s: float = Field(5.0, gt=0, description="SSE heartbeat interval.")
    answer_model: str = Field(
        "search-app", min_length=1,
        description="Model name of the answer engine on /v1/chat/completions and "
                    "/v1/models (beside the served model).")
    rate_limit_per_minute: float = Field(
        60.0, ge=0, description="Answers per minute per client (its API key, else its "
                                "address) on /api/search, /query and the answer model on "
                                "/v1/chat/completions (0: no limit).")
    rate_limit_burst: int = Field(
        20, ge=1, description="Answers a client may start at once before the per-minute "
                              "rate applies.")
    max_streams_per_client: int = Field(
        4, ge=0, description="Answers a client may have in progress at once on "
                             "/api/search and /query (0: no cap).")
    login_attempts_per_minute: float = Field(
        10.0, gt=0, description="Sign-in attempts per minute per address at /login.")

    # --- uploaded documents (collections) ---
    upload_max_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Largest file accepted by POST "
                                               "/api/documents (413 above; the request "
                                               "stops being read at the cap).")
    collection_max_documents: int = Field(
        200, ge=1, description="Documents in one collection.")
    collections_per_owner: int = Field(
        20, ge=1, description="Collections per owner (a user of --multi-user mode, else "
                              "the app as a whole).")

    @field_validator("api_keys", "cors_origins", "fetch_allow", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("speculative_config", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else None
        return value

    @field_validator("relevance_threshold", mode="before")
    @classmethod
    def _auto(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("", "auto") \
            else value

    @field_validator("embedding_model", "model", "upstream_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    def engine_options(self) -> EngineOptions:
        """Engine options; ``model`` may be a catalog name (``search-app models list``):
        then the pulled GGUF (ModelPullError with the command to run, if it is not)."""
        model = resolve_model(self.model, self.models_path())
        llamacpp = LlamaCppOptions(
            model_path=Path(model) if model else None,
            model_name=self.served_model_name,
            context_length=self.context_length or 4096,
            parallel=self.parallel, max_queue=self.max_queue, n_threads=self.threads,
            n_gpu_layers=self.gpu_layers, prompt_lookup_tokens=self.prompt_lookup_tokens,
            allow_amx=self.llama_amx,
            default_copy_dir=(self.default_model_copy_dir or self.models_path())
            if self.default_model_copy else None,
        )
        vllm = VLLMOptions(
            model=model, served_model_name=self.served_model_name, dtype=self.dtype,
            max_model_len=self.context_length,
            gpu_memory_utilization=self.gpu_memory_utilization,
            tensor_parallel_size=self.tensor_parallel_size, enforce_eager=self.enforce_eager,
            max_num_seqs=self.max_num_seqs, speculative_config=self.speculative_config,
        ) if model else None
        upstream = UpstreamOptions(
            base_url=self.upstream_url, api_key=self.upstream_api_key, model=self.model,
            served_model_name=self.served_model_name, context_length=self.context_length,
            timeout_s=self.upstream_timeout_s,
        ) if self.upstream_url else None
        return EngineOptions(llamacpp=llamacpp, vllm=vllm, upstream=upstream,
                             process=ProcessOptions(
                                 restart_backoff_s=self.engine_restart_backoff_s)
                             if self.isolate_engine else None)

    def provider_options(self) -> ProviderOptions:
        urls = {"searxng_url": self.searxng_url} if self.searxng_url else {}
        return ProviderOptions(
            timeout_s=self.search_timeout_s, brave_api_key=self.brave_api_key,
            google_api_key=self.google_api_key, google_cx=self.google_cx,
            serper_api_key=self.serper_api_key, searchapi_api_key=self.searchapi_api_key,
            tavily_api_key=self.tavily_api_key, **urls,
        )

    def reader_options(self) -> ReaderOptions:
        cidrs, hosts = [], []
        for entry in self.fetch_allow:
            try:
                ipaddress.ip_network(entry, strict=False)
                cidrs.append(entry)
            except ValueError:
                hosts.append(entry)
        return ReaderOptions(budget_s=self.read_budget_s, page_timeout_s=self.page_timeout_s,
                             max_pages=self.read_max_pages, allow_hosts=hosts,
                             allow_cidrs=cidrs)

    def models_path(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    def store_location(self) -> str:
        """The PostgreSQL URL when set, else the SQLite file."""
        return self.store_url.get_secret_value() if self.store_url else str(self.store_file())

    def store_file(self) -> Path:
        return self.store_path or self.data_dir / "store.sqlite"

    def pipeline_options(self) -> PipelineOptions:
        return PipelineOptions(
            sources=self.answer_sources, answer_max_tokens=self.answer_max_tokens,
            context_tokens=self.answer_context_tokens,
            rank_timeout_s=self.rank_timeout_s,
            first_token_timeout_s=self.first_token_timeout_s,
            answer_timeout_s=self.answer_timeout_s, related_timeout_s=self.related_timeout_s,
            grounding=self.grounding, lead=self.lead,
            research_steps=self.research_max_steps,
            research_pages=self.research_max_pages,
            research_timeout_s=self.research_timeout_s,
            research_section_tokens=self.research_section_tokens)

    def server_options(self) -> ServerOptions:
        return ServerOptions(
            engine=self.engine, engines=self.engine_options(),
            embedding_model=self.embedding_model, embedding_device=self.device,
            api_keys=[k.get_secret_value() for k in self.api_keys],
            cors_origins=self.cors_origins, max_body_bytes=self.max_body_bytes,
            max_generation_s=self.max_generation_s,
        )
