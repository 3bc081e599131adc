"""Turn the many date formats providers use into one ISO 8601 date (``YYYY-MM-DD``).

Providers send ISO timestamps, RFC 2822 dates, "Mar 5, 2024" or relative phrases such as
"3 days ago". Relative phrases are dropped (None) rather than guessed against a clock the
provider and we may not share.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = ["normalize_date"]

_FORMATS = ("%b %d, %Y", "%B %d, %Y", "%d %b %Y", "%d %B %Y", "%Y/%m/%d", "%d.%m.%Y")
_ISO_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}")


def normalize_date(value: Any) -> str | None:
    """Return ``YYYY-MM-DD`` for a recognisable absolute date, else None (never raises)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    if _ISO_PREFIX.match(text):
        try:
            return datetime.fromisoformat(text.replace(" ", "T", 1)).date().isoformat()
        except ValueError:
            try:
                return datetime.fromisoformat(text[:10]).date().isoformat()
            except ValueError:
                return None
    for fmt in _FORMATS:
        try:
            return datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            continue
    try:
        return parsedate_to_datetime(text).date().isoformat()
    except (TypeError, ValueError, IndexError):
        return None
