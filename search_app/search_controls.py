"""The search controls of a request, with Sonar's names, shared by every face.

``/api/search``, the ``search-app`` answer model (``/v1/chat/completions``), the Python
client and ``search-app ask`` all take the same four fields; one model turns them into
:class:`~retrieval.filters.SearchFilters` and one error (400, naming the field) for a
filter that is malformed or impossible, so no face can answer an unfiltered search for a
filtered question.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError

from retrieval.filters import MAX_DOMAINS, FilterError, Recency, SearchFilters
from serving.errors import BadRequestError

__all__ = ["CONTROL_FIELDS", "SearchControls", "filters_from_extra"]


class SearchControls(BaseModel):
    search_domain_filter: list[str] | None = Field(
        None, description=f"Up to {MAX_DOMAINS} domains to search in (example.com, "
                          "subdomains included); a leading '-' excludes one instead "
                          "(-example.com).")
    search_recency_filter: Recency | None = Field(
        None, description="Only results published in the past hour, day, week, month "
                          "or year.")
    search_after_date_filter: str | None = Field(
        None, max_length=40, description="Only results published on or after this day: "
                                         "M/D/YYYY (3/1/2025) or YYYY-MM-DD.")
    search_before_date_filter: str | None = Field(
        None, max_length=40, description="Only results published on or before this day.")

    def filters(self) -> SearchFilters:
        """The filters, or a 400 naming the field that cannot be applied."""
        try:
            return SearchFilters.parse(domains=self.search_domain_filter,
                                       recency=self.search_recency_filter,
                                       after=self.search_after_date_filter,
                                       before=self.search_before_date_filter)
        except FilterError as exc:
            raise BadRequestError(exc.message, param=exc.param) from None


CONTROL_FIELDS = tuple(SearchControls.model_fields)


def filters_from_extra(extra: dict[str, Any]) -> SearchFilters:
    """The filters among an OpenAI request's extra fields (how Sonar clients send them)."""
    try:
        controls = SearchControls.model_validate(
            {k: extra[k] for k in CONTROL_FIELDS if k in extra})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "search_domain_filter"
        raise BadRequestError(f"{field}: {error['msg']}", param=field) from None
    return controls.filters()
