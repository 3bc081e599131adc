"""The models an API server offers, by served name, and whether they are ready yet.

Why a registry instead of one engine: engines load in the background (vLLM needs tens of
seconds), so the server answers 503 until then instead of refusing connections; and the
search app serves more than one model (the LLM, the embedder, the answer engine).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from serving.embeddings import Embedder
from serving.engines.base import Engine
from serving.errors import BadRequestError, EngineNotReadyError, ModelNotFoundError
from serving.protocol import ChatCompletionRequest, ChatCompletionResponse, ModelCard

__all__ = ["ChatAgent", "ModelRegistry"]

State = Literal["loading", "ready", "failed"]


class ChatAgent(Protocol):
    """A chat model that is more than an engine: the host app answers its requests
    (the search app's answer engine). The serving layer only routes to it by name."""

    def card(self) -> ModelCard: ...

    async def chat(self, req: ChatCompletionRequest
                   ) -> ChatCompletionResponse | AsyncIterator[str]: ...


@dataclass
class ModelRegistry:
    engines: dict[str, Engine] = field(default_factory=dict)
    embedders: dict[str, Embedder] = field(default_factory=dict)
    agents: dict[str, ChatAgent] = field(default_factory=dict)
    state: State = "loading"
    failure: str | None = None

    def add_engine(self, engine: Engine, name: str | None = None) -> None:
        self.engines[name or engine.info.id] = engine

    def add_embedder(self, embedder: Embedder, name: str | None = None) -> None:
        self.embedders[name or embedder.model_id] = embedder

    def _check_ready(self) -> None:
        if self.state == "loading":
            raise EngineNotReadyError("The model is still loading; retry in a few seconds.")
        if self.state == "failed":
            raise EngineNotReadyError(f"The model failed to load: {self.failure}")

    def engine(self, name: str) -> Engine:
        self._check_ready()
        try:
            return self.engines[name]
        except KeyError:
            if name in self.agents:
                raise BadRequestError(f"The model `{name}` answers chat completions only "
                                      "(/v1/chat/completions).", param="model") from None
            raise ModelNotFoundError(name, self.names()) from None

    def agent(self, name: str) -> ChatAgent | None:
        """The agent serving ``name``, once the models are ready; None if not an agent."""
        if name not in self.agents:
            return None
        self._check_ready()
        return self.agents[name]

    def embedder(self, name: str) -> Embedder:
        self._check_ready()
        try:
            return self.embedders[name]
        except KeyError:
            if name in self.engines:
                raise ModelNotFoundError(name, list(self.embedders)) from None
            raise ModelNotFoundError(name, self.names()) from None

    def names(self) -> list[str]:
        return [*self.engines, *self.agents, *self.embedders]

    @property
    def default_engine(self) -> Engine:
        self._check_ready()
        if not self.engines:
            raise EngineNotReadyError("No generation model is loaded.")
        return next(iter(self.engines.values()))
