"""Keyset pages for the console's lists: newest first by id, with an opaque cursor to the next page."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service.console.errors import ConsoleError

MAX_LIMIT = 200


@dataclass(frozen=True)
class Page:
    """Some rows, newest first, and the cursor of the next page (None on the last)."""

    items: list[Any]
    next_cursor: str | None


def encode_cursor(last_id: int) -> str:
    """The opaque cursor that continues after ``last_id``."""
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id a cursor continues after, or a ConsoleError naming the field."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind == "id" and value.isdigit():
            return int(value)
    except ValueError:
        pass
    raise ConsoleError("cursor: not a cursor from this list (start again without it)")


def keyset_page(session: Session, query: sa.Select, id_column: Any, *, cursor: str | None = None,
                limit: int = 50) -> Page:
    """One page of ``query`` (ORM entities) by ``id_column`` descending, after ``cursor``."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ConsoleError(f"limit: must be between 1 and {MAX_LIMIT}")
    if cursor:
        query = query.where(id_column < decode_cursor(cursor))
    rows = list(session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(rows[-1].id) if more else None)
