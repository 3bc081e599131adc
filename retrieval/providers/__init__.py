"""Search providers: one interface, normalized :class:`~retrieval.types.SearchResult`.

Web providers (SearXNG, Brave, Google Programmable Search, Serper, SearchApi, Tavily)
share one ``httpx.AsyncClient``; ``local`` adapts the local index. ``FallbackSearch``
chains them and reports every attempt; ``build_chain`` builds one from settings.
"""

from retrieval.providers._base import DEFAULT_TIMEOUT_S, HTTPProvider, SearchProvider
from retrieval.providers._dates import normalize_date
from retrieval.providers._errors import (
    AllProvidersFailed,
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderHTTPError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from retrieval.providers._factory import (
    PROVIDER_NAMES,
    ProviderOptions,
    build_chain,
    build_provider,
)
from retrieval.providers._fallback import Attempt, ChainResult, FallbackSearch
from retrieval.providers._local import LocalProvider, LocalSearch, SearchFn
from retrieval.providers._web import (
    BraveProvider,
    GoogleProvider,
    SearchApiProvider,
    SearXNGProvider,
    SerperProvider,
    TavilyProvider,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "PROVIDER_NAMES",
    "AllProvidersFailed",
    "Attempt",
    "BraveProvider",
    "ChainResult",
    "FallbackSearch",
    "GoogleProvider",
    "HTTPProvider",
    "LocalProvider",
    "LocalSearch",
    "ProviderAuthError",
    "ProviderBadResponse",
    "ProviderError",
    "ProviderHTTPError",
    "ProviderOptions",
    "ProviderRateLimited",
    "ProviderTimeout",
    "ProviderUnavailable",
    "SearXNGProvider",
    "SearchApiProvider",
    "SearchFn",
    "SearchProvider",
    "SerperProvider",
    "TavilyProvider",
    "build_chain",
    "build_provider",
    "normalize_date",
]
