"""Build providers by name from one options model (the app's Settings fills it).

``build_chain("searxng,local", options, client=..., local=index)`` is how the app turns
its ``provider`` setting into a FallbackSearch. A plain dict registry, like the engines'.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from retrieval.providers._base import DEFAULT_TIMEOUT_S, SearchProvider
from retrieval.providers._fallback import FallbackSearch
from retrieval.providers._local import LocalProvider, LocalSearch, SearchFn
from retrieval.providers._web import (
    BraveProvider,
    GoogleProvider,
    SearchApiProvider,
    SearXNGProvider,
    SerperProvider,
    TavilyProvider,
)

__all__ = ["PROVIDER_NAMES", "ProviderOptions", "build_chain", "build_provider"]


class ProviderOptions(BaseModel):
    """Where each provider lives and how to authenticate. Keys are SecretStr: they print
    as ``**********`` and are only unwrapped when a request is built."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="per search call")
    timeouts: dict[str, float] = Field(default_factory=dict,
                                       description="per-provider overrides of timeout_s")
    fallback_on_empty: bool = False

    searxng_url: str = SearXNGProvider.default_base_url
    searxng_language: str | None = None

    brave_url: str = BraveProvider.default_base_url
    brave_api_key: SecretStr | None = None

    google_url: str = GoogleProvider.default_base_url
    google_api_key: SecretStr | None = None
    google_cx: str | None = None

    serper_url: str = SerperProvider.default_base_url
    serper_api_key: SecretStr | None = None

    searchapi_url: str = SearchApiProvider.default_base_url
    searchapi_api_key: SecretStr | None = None

    tavily_url: str = TavilyProvider.default_base_url
    tavily_api_key: SecretStr | None = None

    def timeout_for(self, name: str) -> float:
        return self.timeouts.get(name, self.timeout_s)


def _keyed(cls: type, url_attr: str, key_attr: str) -> Callable[..., SearchProvider]:
    def build(o: ProviderOptions, client: httpx.AsyncClient) -> SearchProvider:
        key = getattr(o, key_attr)
        if key is None:
            raise ValueError(f"provider {cls.name!r} needs ProviderOptions.{key_attr}")
        return cls(client, api_key=key, base_url=getattr(o, url_attr),
                   timeout_s=o.timeout_for(cls.name))
    return build


def _searxng(o: ProviderOptions, client: httpx.AsyncClient) -> SearchProvider:
    return SearXNGProvider(client, base_url=o.searxng_url, language=o.searxng_language,
                           timeout_s=o.timeout_for("searxng"))


def _google(o: ProviderOptions, client: httpx.AsyncClient) -> SearchProvider:
    if o.google_api_key is None or not o.google_cx:
        raise ValueError("provider 'google' needs ProviderOptions.google_api_key and google_cx")
    return GoogleProvider(client, api_key=o.google_api_key, engine_id=o.google_cx,
                          base_url=o.google_url, timeout_s=o.timeout_for("google"))


_WEB: dict[str, Callable[[ProviderOptions, httpx.AsyncClient], SearchProvider]] = {
    "searxng": _searxng,
    "brave": _keyed(BraveProvider, "brave_url", "brave_api_key"),
    "google": _google,
    "serper": _keyed(SerperProvider, "serper_url", "serper_api_key"),
    "searchapi": _keyed(SearchApiProvider, "searchapi_url", "searchapi_api_key"),
    "tavily": _keyed(TavilyProvider, "tavily_url", "tavily_api_key"),
}
PROVIDER_NAMES: tuple[str, ...] = (*_WEB, "local")


def build_provider(name: str, options: ProviderOptions, *, client: httpx.AsyncClient | None,
                   local: SearchFn | LocalSearch | None = None) -> SearchProvider:
    """One provider by name. Web providers need the shared ``client``; ``local`` needs
    the index. Raises ValueError naming the missing option or the known names."""
    name = name.strip().lower()
    if name == "local":
        if local is None:
            raise ValueError("provider 'local' needs the local index (local=...)")
        return LocalProvider(local, timeout_s=options.timeout_for("local"))
    if name not in _WEB:
        raise ValueError(f"unknown search provider {name!r}; known: {', '.join(PROVIDER_NAMES)}")
    if client is None:
        raise ValueError(f"provider {name!r} needs a shared httpx.AsyncClient (client=...)")
    return _WEB[name](options, client)


def build_chain(names: str | list[str], options: ProviderOptions, *,
                client: httpx.AsyncClient | None,
                local: SearchFn | LocalSearch | None = None) -> FallbackSearch:
    """A FallbackSearch from ``"searxng,local"`` (or a list), in that order."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if not names:
        raise ValueError("no search provider named")
    return FallbackSearch([build_provider(n, options, client=client, local=local)
                           for n in names], fallback_on_empty=options.fallback_on_empty)
