"""Reading a list page's query string into the history filters (bookmarkable URLs), and back into links."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Callable
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from werkzeug.datastructures import MultiDict

from service.console import history
from service.console.errors import ConsoleError

# The saved filters of the delivery log: one click each, plain query strings.
SAVED_DELIVERY_FILTERS = (("failed", "Failed"), ("retrying", "Retrying"), ("dead", "Dead"), ("paused", "Paused"))
DELIVERY_FIELDS = ("status", "connection", "rule", "event_type", "event_key", "since", "until")
CALL_FIELDS = ("number", "outcome", "direction", "since", "until")


def local_bound(name: str, value: str, tz: str) -> datetime | None:
    """A time bound from a form (``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM``) in the account's zone; ConsoleError if bad."""
    value = value.strip()
    if not value:
        return None
    if len(value) > 40:
        raise ConsoleError(f"{name}: a date (YYYY-MM-DD) or a date and time (YYYY-MM-DDTHH:MM)")
    try:
        parsed = (datetime.combine(date.fromisoformat(value), time(0)) if len(value) == 10
                  else datetime.fromisoformat(value))
    except ValueError:
        raise ConsoleError(f"{name}: a date (YYYY-MM-DD) or a date and time (YYYY-MM-DDTHH:MM)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=ZoneInfo(tz))


def delivery_filter(args: MultiDict, tz: str) -> history.DeliveryFilter:
    """The delivery log's filter from its query string (``status`` may repeat); ConsoleError naming a bad field."""
    return history.DeliveryFilter(
        status=tuple(s for s in args.getlist("status")[:len(history.DELIVERY_STATUSES)] if s),
        connection=args.get("connection") or None, rule_name=args.get("rule") or None,
        event_type=args.get("event_type") or None, event_key=args.get("event_key") or None,
        since=local_bound("since", args.get("since", ""), tz), until=local_bound("until", args.get("until", ""), tz))


def call_filter(args: MultiDict, tz: str) -> history.CallFilter:
    """The call list's filter from its query string; ConsoleError naming a bad field."""
    return history.CallFilter(number=args.get("number") or None, outcome=args.get("outcome") or None,
                              direction=args.get("direction") or None,
                              since=local_bound("since", args.get("since", ""), tz),
                              until=local_bound("until", args.get("until", ""), tz))


def query_string(args: MultiDict, fields: tuple[str, ...], **replace: str | None) -> str:
    """The list's query string with only its own fields, some replaced (None drops one): for pager links."""
    pairs = [(k, v) for k in fields if k not in replace for v in args.getlist(k) if v]
    pairs += [(k, v) for k, v in replace.items() if v]
    return urlencode(pairs)


@dataclass(frozen=True)
class Listing:
    """One page of a filtered list, the error that stopped it, and the links to the newest and the next page."""

    found: history.Page
    error: str | None
    first_url: str | None
    next_url: str | None


def list_page(args: MultiDict, fields: tuple[str, ...], fetch: Callable[[str | None], history.Page]) -> Listing:
    """Run ``fetch(cursor)`` for the query string's page; a bad filter or cursor becomes the listing's error."""
    found, error = history.Page(items=[]), None
    try:
        found = fetch(args.get("cursor") or None)
    except ConsoleError as exc:
        error = str(exc)
    later = query_string(args, fields, cursor=found.next_cursor)
    return Listing(found, error, first_url=("?" + query_string(args, fields)) if args.get("cursor") else None,
                   next_url=f"?{later}" if found.next_cursor else None)
