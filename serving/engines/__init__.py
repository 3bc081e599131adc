"""Inference engines behind one interface, and the factory that picks one.

Heavy imports (``vllm``, ``llama_cpp``) happen only inside the engine modules, when an
engine of that kind is built, so the rest of the project runs without them.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from serving.engines.base import (
    ChatMessage,
    Engine,
    EngineLoad,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    SamplingOptions,
    self_check,
)
from serving.engines.options import (
    EngineOptions,
    LlamaCppOptions,
    ProcessOptions,
    UpstreamOptions,
    VLLMOptions,
)

__all__ = [
    "ChatMessage",
    "Engine",
    "EngineKind",
    "EngineLoad",
    "EngineOptions",
    "FinishReason",
    "GenerationChunk",
    "GenerationRequest",
    "LlamaCppOptions",
    "ModelInfo",
    "ProcessOptions",
    "SamplingOptions",
    "UpstreamOptions",
    "VLLMOptions",
    "create_engine",
    "resolve_engine_kind",
    "self_check",
]

EngineKind = Literal["auto", "vllm", "llamacpp", "openai"]


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_engine_kind(kind: EngineKind) -> Literal["vllm", "llamacpp", "openai"]:
    """``auto``: vLLM when a CUDA GPU and vllm are present, otherwise llama.cpp."""
    if kind != "auto":
        return kind
    if importlib.util.find_spec("vllm") is not None and _cuda_available():
        return "vllm"
    return "llamacpp"


async def create_engine(kind: EngineKind, options: EngineOptions) -> Engine:
    """Build and start the engine; the caller owns it (``async with`` or ``aclose``)."""
    resolved = resolve_engine_kind(kind)
    if resolved == "vllm":
        from serving.engines.vllm import VLLMEngine

        if options.vllm is None:
            raise ValueError("The vllm engine needs a model: --model HF_ID_OR_FOLDER.")
        return await VLLMEngine.create(options.vllm)
    if resolved == "llamacpp":
        if options.process is not None:  # the default: a crash does not end the app
            from serving.engines.process import ProcessEngine

            return await ProcessEngine.create(options.llamacpp, options.process)
        from serving.engines.llamacpp import LlamaCppEngine

        return await LlamaCppEngine.create(options.llamacpp)
    from serving.engines.upstream import UpstreamEngine

    if options.upstream is None:
        raise ValueError("The openai engine needs --upstream-url (an OpenAI-compatible /v1 URL).")
    return await UpstreamEngine.create(options.upstream)
