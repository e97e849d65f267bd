"""What happened in an account, for the console and the API: deliveries and their attempts, events, calls, the day.

Plain functions of a SQLAlchemy session; none commits, none checks access (the caller has already run
``access.require(principal, account_id, "read")``). Every lookup is scoped by ``account_id``: another
account's id reads as :class:`~service.console.errors.NotFound`. Lists are newest first, a page at a time,
keyset on the row id: ``Page.next_cursor`` is an opaque string to pass back as ``cursor``; a cursor that
is not one of ours raises :class:`~service.console.errors.ConsoleError` (a ValueError) naming ``cursor``.

Signatures (as implemented):

- ``DeliveryFilter(status=(), connection=None, rule_name=None, event_type=None, event_key=None, since=None,
  until=None)``; ``status`` takes one status or several. ``EventFilter(type=None, since=None, until=None)``.
  ``CallFilter(number=None, outcome=None, direction=None, since=None, until=None)``. All validate on
  construction (ConsoleError naming the field); ``since`` is inclusive, ``until`` exclusive, both aware.
- ``list_deliveries(session, account_id, flt, *, cursor=None, limit=50) -> Page[Delivery]``
- ``get_delivery(session, account_id, delivery_id) -> Delivery``
- ``delivery_attempts(session, account_id, delivery_id) -> list[DeliveryAttempt]`` (oldest first)
- ``list_events(session, account_id, flt, *, cursor=None, limit=50) -> Page[StoredEvent]``
- ``get_event(session, account_id, ref) -> StoredEvent`` (``ref``: the event's id (int) or key (str))
- ``list_calls(session, account_id, flt, *, cursor=None, limit=50) -> Page[CallSummary]``
- ``call_detail(session, account_id, call_key) -> CallDetail``
- ``overview(session, account_id, *, day=None, tz=None) -> Overview`` (defaults: today, the account's zone)

ORM rows read from SQLite carry naive datetimes (UTC): show them through ``service.events.aware``.
The dataclasses built here (CallSummary, CallDetail, Overview) carry aware ones already.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Generic, Iterable, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from service.console.errors import ConsoleError, NotFound
from service.events import aware
from service.pbx.calls import call_key_for_leg
from service.pbx.payloads import KNOWN_HOOKS
from service.store import queries
from service.store.models import Account, AuditEntry, Connection, Delivery, DeliveryAttempt, StoredEvent, utcnow

T = TypeVar("T")

DELIVERY_STATUSES = ("pending", "running", "succeeded", "retrying", "failed", "dead", "paused", "discarded")
CALL_OUTCOMES = ("answered", "voicemail", "busy", "missed", "no_answer")
CALL_DIRECTIONS = ("inbound", "outbound", "internal")
MAX_LIMIT = 200
# Ids are 32-bit on PostgreSQL (serial): a larger number cannot name a row, and must not reach the driver.
MAX_ID = 2**31 - 1
# The hook kinds whose last arrival the overview shows: every VirtualPBX hook, and CRM webhooks.
HOOK_EVENT_TYPES = tuple(f"virtualpbx.{hook}" for hook in KNOWN_HOOKS) + ("crm.event",)
# Raw hooks of a call are looked for this long around its call events (the call's own length aside).
CALL_HOOK_MARGIN = timedelta(hours=2)
# A call none of whose call events was stored (still ringing, or its hooks came without an A-leg) is looked for
# among the hooks received this recently.
CALL_HOOKS_WITHOUT_EVENTS = timedelta(days=2)
_ENDED, _MISSED = "call.ended:", "call.missed:"


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a newest-first list; ``next_cursor`` is None on the last page."""

    items: list[T]
    next_cursor: str | None = None


def _text(name: str, value: Any, max_len: int) -> str | None:
    """A filter's optional text field: a str no longer than ``max_len`` (ConsoleError naming it otherwise)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConsoleError(f"{name}: must be text")
    if len(value) > max_len or "\x00" in value:
        raise ConsoleError(f"{name}: at most {max_len} characters, no NUL")
    return value


def _when(name: str, value: Any) -> datetime | None:
    """A filter's optional time bound, as aware UTC (SQLite stores UTC wall time, so bounds must be UTC too)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ConsoleError(f"{name}: must be a date and time")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConsoleError(f"{name}: needs a time zone (e.g. 2026-01-31T09:00:00+00:00)")
    return value.astimezone(timezone.utc)


def _window(flt: Any) -> None:
    """Normalise ``since``/``until`` of a frozen filter in place and check their order."""
    since, until = _when("since", flt.since), _when("until", flt.until)
    if since and until and since >= until:
        raise ConsoleError("until: must be after since")
    object.__setattr__(flt, "since", since)
    object.__setattr__(flt, "until", until)


def _choice(name: str, value: Any, allowed: Iterable[str]) -> str | None:
    value = _text(name, value, 50)
    if value is not None and value not in allowed:
        raise ConsoleError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class DeliveryFilter:
    """Which deliveries to list: any of ``status`` (one or several), and the other fields exactly."""

    status: tuple[str, ...] | str = ()
    connection: str | None = None
    rule_name: str | None = None
    event_type: str | None = None
    event_key: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        statuses = (self.status,) if isinstance(self.status, str) else tuple(self.status or ())
        for status in statuses:
            _choice("status", status, DELIVERY_STATUSES)
        object.__setattr__(self, "status", tuple(dict.fromkeys(s for s in statuses if s)))
        for name, max_len in (("connection", 100), ("rule_name", 200), ("event_type", 100), ("event_key", 300)):
            object.__setattr__(self, name, _text(name, getattr(self, name), max_len))
        _window(self)

    def to_doc(self) -> dict[str, Any]:
        """The filter as JSON (stored with a replay job; ``queries.delivery_conditions`` takes its fields)."""
        return {"status": list(self.status), "connection": self.connection, "rule_name": self.rule_name,
                "event_type": self.event_type, "event_key": self.event_key,
                "since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat() if self.until else None}


@dataclass(frozen=True)
class EventFilter:
    """Which stored events to list: of one ``type``, occurred in [since, until)."""

    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", _text("type", self.type, 100))
        _window(self)


@dataclass(frozen=True)
class CallFilter:
    """Which calls to list: a number the caller's or callee's contains, an outcome, a direction, a time window."""

    number: str | None = None
    outcome: str | None = None
    direction: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        number = _text("number", self.number, 40)
        if number is not None:
            if not re.fullmatch(r"[0-9+\-(). ]+", number):
                raise ConsoleError("number: digits only (spaces, +, -, dots and brackets are ignored)")
            number = re.sub(r"\D", "", number)
            if len(number) < 3:
                raise ConsoleError("number: at least 3 digits")
        object.__setattr__(self, "number", number)
        object.__setattr__(self, "outcome", _choice("outcome", self.outcome, CALL_OUTCOMES))
        object.__setattr__(self, "direction", _choice("direction", self.direction, CALL_DIRECTIONS))
        _window(self)


def _check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ConsoleError(f"limit: a whole number from 1 to {MAX_LIMIT}")
    return limit


def encode_cursor(last_id: int) -> str:
    """The opaque cursor of the page after the row ``last_id``."""
    return base64.urlsafe_b64encode(json.dumps({"before": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The row id a cursor continues before; ConsoleError naming ``cursor`` for anything we did not hand out."""
    if cursor is None or cursor == "":
        return None
    try:
        if not isinstance(cursor, str) or len(cursor) > 64:
            raise ValueError
        doc = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        before = doc["before"]
        if isinstance(before, bool) or not isinstance(before, int) or not 1 <= before <= MAX_ID:
            raise ValueError
        return before
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeDecodeError):
        raise ConsoleError("cursor: not a cursor from a previous page of this list") from None


def _page_of(rows: list, limit: int) -> Page:
    """A page from up to ``limit + 1`` rows, newest first (the extra one says a page follows)."""
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=rows, next_cursor=encode_cursor(rows[-1].id) if more and rows else None)


def keyset_page(session: Session, query: sa.Select, id_column, cursor: str | None, limit: int) -> Page:
    """Run a newest-first keyset query: rows before the cursor, one more than asked to know if a page follows."""
    limit = _check_limit(limit)
    before = decode_cursor(cursor)
    if before is not None:
        query = query.where(id_column < before)
    return _page_of(list(session.scalars(query.order_by(id_column.desc()).limit(limit + 1))), limit)


def parse_row_id(value: Any) -> int | None:
    """A row id from the caller (maybe a URL's text), or None when it cannot name a row."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    return value if isinstance(value, int) and 1 <= value <= MAX_ID else None


# ------------------------------------------------------------------------------------------- deliveries

def _delivery_conditions(account_id: str, flt: DeliveryFilter) -> list[sa.ColumnElement[bool]]:
    return queries.delivery_conditions(
        account_id, status=flt.status, connection=flt.connection, rule_name=flt.rule_name,
        event_type=flt.event_type, event_key=flt.event_key, since=flt.since, until=flt.until)


def list_deliveries(session: Session, account_id: str, flt: DeliveryFilter, *, cursor: str | None = None,
                    limit: int = 50) -> Page[Delivery]:
    """A page of the account's deliveries matching ``flt``, newest first."""
    query = sa.select(Delivery).where(*_delivery_conditions(account_id, flt))
    if flt.since is not None or flt.until is not None:
        limit, before = _check_limit(limit), decode_cursor(cursor)
        page = _near_page(session, account_id, query, before, limit) or _window_page(
            session, account_id, flt, query, before, limit)
        if page is not None:
            return page
    return keyset_page(session, query, Delivery.id, cursor, limit)


# A time window's page is looked for first among this many of the account's rows below the cursor (it is there
# when the window reaches up to them), then, when the window holds at most WINDOW_ROWS deliveries of the account,
# within the ids of those, read through (account_id, created_at); else by walking the ids down (bench/console_log).
NEAR_ROWS = 200
WINDOW_ROWS = 2500


def _below(before: int | None) -> list[sa.ColumnElement[bool]]:
    return [Delivery.id < before] if before is not None else []


def _near_page(session: Session, account_id: str, query: sa.Select, before: int | None,
               limit: int) -> Page[Delivery] | None:
    """The page when it fills up within the account's NEAR_ROWS rows below the cursor, else None."""
    near = sa.select(Delivery.id).where(Delivery.account_id == account_id, *_below(before))
    lowest = sa.select(sa.func.min(near.order_by(Delivery.id.desc()).limit(NEAR_ROWS).subquery().c.id))
    rows = list(session.scalars(query.where(Delivery.id >= lowest.scalar_subquery(), *_below(before))
                                .order_by(Delivery.id.desc()).limit(limit + 1)))
    return _page_of(rows, limit) if len(rows) > limit else None


def _window_page(session: Session, account_id: str, flt: DeliveryFilter, query: sa.Select, before: int | None,
                 limit: int) -> Page[Delivery] | None:
    """The page of a time-windowed list when the window is small, else None (then walk the ids).

    Walking ids newest first reads every newer row of the account before it reaches a window far in the past
    (or the whole account when the window holds few rows). Ids cannot be bounded from the window alone: a
    replay moves created_at forward, so created_at does not follow id order. So the window's ids are read
    through the (account_id, created_at) index, at most WINDOW_ROWS + 1 of them (the other filters left out, so
    a selective one cannot make this read the whole window). When that is all of them, every row of the window
    lies between the least and the greatest, and the page is the id walk within that range."""
    window = sa.select(Delivery.id).where(*queries.delivery_conditions(account_id, since=flt.since,
                                                                       until=flt.until), *_below(before))
    ids = window.order_by(Delivery.created_at.desc()).limit(WINDOW_ROWS + 1).subquery()
    count, lowest, highest = session.execute(sa.select(sa.func.count(), sa.func.min(ids.c.id),
                                                       sa.func.max(ids.c.id))).one()
    if count > WINDOW_ROWS:
        return None
    if not count:
        return Page(items=[])
    rows = list(session.scalars(query.where(Delivery.id >= lowest, Delivery.id <= highest)
                                .order_by(Delivery.id.desc()).limit(limit + 1)))
    return _page_of(rows, limit)


def get_delivery(session: Session, account_id: str, delivery_id: int | str) -> Delivery:
    """One delivery of the account; NotFound for an unknown id or another account's."""
    key = parse_row_id(delivery_id)
    delivery = session.get(Delivery, key) if key is not None else None
    if delivery is None or delivery.account_id != account_id:
        raise NotFound("no such delivery")
    return delivery


def delivery_attempts(session: Session, account_id: str, delivery_id: int | str) -> list[DeliveryAttempt]:
    """A delivery's attempts, oldest first; NotFound when the delivery is not the account's."""
    delivery = get_delivery(session, account_id, delivery_id)
    return list(session.scalars(sa.select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery.id)
                                .order_by(DeliveryAttempt.id)))


def _attempts_by_delivery(session: Session, delivery_ids: list[int]) -> dict[int, list[DeliveryAttempt]]:
    found: dict[int, list[DeliveryAttempt]] = defaultdict(list)
    if delivery_ids:
        for attempt in session.scalars(sa.select(DeliveryAttempt).where(
                DeliveryAttempt.delivery_id.in_(delivery_ids)).order_by(DeliveryAttempt.id)):
            found[attempt.delivery_id].append(attempt)
    return found


# ----------------------------------------------------------------------------------------------- events

def list_events(session: Session, account_id: str, flt: EventFilter, *, cursor: str | None = None,
                limit: int = 50) -> Page[StoredEvent]:
    """A page of the account's stored events matching ``flt``, newest first."""
    query = sa.select(StoredEvent).where(StoredEvent.account_id == account_id)
    if flt.type is not None:
        query = query.where(StoredEvent.type == flt.type)
    if flt.since is not None:
        query = query.where(StoredEvent.occurred_at >= flt.since)
    if flt.until is not None:
        query = query.where(StoredEvent.occurred_at < flt.until)
    return keyset_page(session, query, StoredEvent.id, cursor, limit)


def get_event(session: Session, account_id: str, ref: int | str) -> StoredEvent:
    """One stored event of the account by id (an int) or key (a str); NotFound otherwise."""
    if isinstance(ref, int) and not isinstance(ref, bool):
        key = parse_row_id(ref)
        event = session.get(StoredEvent, key) if key is not None else None
        if event is not None and event.account_id != account_id:
            event = None
    elif isinstance(ref, str) and 0 < len(ref) <= 300 and "\x00" not in ref:  # no stored key holds a NUL
        event = session.scalars(sa.select(StoredEvent).where(StoredEvent.account_id == account_id,
                                                             StoredEvent.key == ref)).first()
    else:
        event = None
    if event is None:
        raise NotFound("no such event")
    return event


# ------------------------------------------------------------------------------------------------ calls

@dataclass(frozen=True)
class CallSummary:
    """One call as its ``call.ended`` event summed it up (or ``call.missed``, when no leg was ever seen, or
    ``voicemail.new``, when the voicemail notification is all pbxrelay heard of it: outcome voicemail)."""

    call_key: str
    event_id: int
    event_key: str
    occurred_at: datetime
    direction: str | None
    caller: dict[str, Any]
    callee: dict[str, Any]
    answered_by: dict[str, Any] | None
    outcome: str | None
    started_at: str | None
    ended_at: str | None
    duration: int | None
    talk_time: int | None
    voicemail_left: bool
    summary: dict[str, Any]


def _call_summary(event: StoredEvent) -> CallSummary:
    data = event.data if isinstance(event.data, dict) else {}
    if event.type == "voicemail.new":
        # The notification tells who called which mailbox, not the call's direction, timing or talk time.
        return CallSummary(
            call_key=data.get("call_id") or "", event_id=event.id, event_key=event.key,
            occurred_at=aware(event.occurred_at), direction=None, caller=data.get("caller") or {},
            callee=data.get("callee") or {}, answered_by=None, outcome="voicemail", started_at=None,
            ended_at=None, duration=None, talk_time=None, voicemail_left=True, summary=data)
    prefix = _ENDED if event.key.startswith(_ENDED) else _MISSED
    return CallSummary(
        call_key=event.key[len(prefix):], event_id=event.id, event_key=event.key,
        occurred_at=aware(event.occurred_at), direction=data.get("direction"),
        caller=data.get("caller") or {}, callee=data.get("callee") or {}, answered_by=data.get("answered_by"),
        outcome=data.get("outcome"), started_at=data.get("started_at"), ended_at=data.get("ended_at"),
        duration=data.get("duration"), talk_time=data.get("talk_time"),
        voicemail_left=bool(data.get("voicemail_left")), summary=data)


def _is_voicemail():
    return StoredEvent.type == "voicemail.new"


def _call_outcome():
    """A call row's outcome: its event's, or voicemail for a call known only by its voicemail notification."""
    return sa.case((_is_voicemail(), sa.literal("voicemail", sa.String)),
                   else_=StoredEvent.data["outcome"].as_string())


def _call_direction():
    """A call row's direction: its event's; unknown (NULL) for a call known only by its voicemail."""
    return sa.case((_is_voicemail(), sa.null()), else_=StoredEvent.data["direction"].as_string())


def _calls_query(account_id: str, columns: Iterable[Any] | None = None) -> sa.Select:
    """One row per call: its call.ended event; its call.missed event when the call has no call.ended (Kazoo's
    missed-call notification for a call none of whose legs arrived); or, when it has neither (only the
    voicemail notification was subscribed or arrived), its newest voicemail.new event."""
    ended = aliased(StoredEvent)
    has_ended = sa.exists().where(
        ended.account_id == StoredEvent.account_id,
        ended.key == sa.literal(_ENDED, sa.String) + sa.func.substr(StoredEvent.key, len(_MISSED) + 1))
    vm_call = StoredEvent.data["call_id"].as_string()
    summed_up = aliased(StoredEvent)
    has_summary = sa.exists().where(  # two probes of the (account_id, key) unique index
        summed_up.account_id == StoredEvent.account_id,
        summed_up.key.in_((sa.literal(_ENDED, sa.String) + vm_call, sa.literal(_MISSED, sa.String) + vm_call)))
    newer = aliased(StoredEvent)
    has_newer_voicemail = sa.exists().where(  # a second message left in the same call: one row per call
        newer.account_id == StoredEvent.account_id, newer.type == "voicemail.new", newer.id > StoredEvent.id,
        newer.data["call_id"].as_string() == vm_call)
    query = sa.select(*(columns or (StoredEvent,))).where(
        StoredEvent.account_id == account_id,
        StoredEvent.type.in_(("call.ended", "call.missed", "voicemail.new")),
        sa.or_(StoredEvent.type == "call.ended",
               sa.and_(StoredEvent.type == "call.missed", ~has_ended),
               # (Checked in this order: the newer-voicemail scan runs only for calls with no summary.)
               sa.and_(_is_voicemail(), vm_call.is_not(None), vm_call != "", ~has_summary, ~has_newer_voicemail)))
    return query


def list_calls(session: Session, account_id: str, flt: CallFilter, *, cursor: str | None = None,
               limit: int = 50) -> Page[CallSummary]:
    """A page of the account's calls matching ``flt``, newest (last ended) first."""
    query = _calls_query(account_id)
    if flt.outcome is not None:
        query = query.where(_call_outcome() == flt.outcome)
    if flt.direction is not None:
        query = query.where(_call_direction() == flt.direction)
    if flt.number is not None:
        pattern = f"%{flt.number}%"
        query = query.where(sa.or_(StoredEvent.data[("caller", "number")].as_string().like(pattern),
                                   StoredEvent.data[("callee", "number")].as_string().like(pattern)))
    if flt.since is not None:
        query = query.where(StoredEvent.occurred_at >= flt.since)
    if flt.until is not None:
        query = query.where(StoredEvent.occurred_at < flt.until)
    page = keyset_page(session, query, StoredEvent.id, cursor, limit)
    return Page(items=[_call_summary(event) for event in page.items], next_cursor=page.next_cursor)


@dataclass(frozen=True)
class DeliveryHistory:
    """A delivery with its attempts, oldest first."""

    delivery: Delivery
    attempts: list[DeliveryAttempt]


@dataclass(frozen=True)
class CallDetail:
    """Everything pbxrelay knows of one call: the hooks of its legs, the call events derived from them, the
    deliveries those caused (with their attempts) and the rules that matched."""

    call_key: str
    summary: CallSummary | None
    legs: list[StoredEvent]
    events: list[StoredEvent]
    deliveries: list[DeliveryHistory]
    rules: list[str] = field(default_factory=list)


def _hooks_of_call(session: Session, account_id: str, call_key: str,
                   around: list[datetime]) -> list[StoredEvent]:
    """The raw VirtualPBX hooks of a call (leg hooks, and notifications naming it), oldest first."""
    by_id = StoredEvent.data["call_id"].as_string()
    by_other = StoredEvent.data["other_leg_call_id"].as_string()
    query = sa.select(StoredEvent).where(
        StoredEvent.account_id == account_id, StoredEvent.type.like("virtualpbx.%"),
        sa.or_(by_id == call_key, by_other == call_key))
    if around:
        # Bounded to the call's time (a call cannot outlast its ended event), so the search stays small.
        query = query.where(StoredEvent.occurred_at >= min(around) - CALL_HOOK_MARGIN - timedelta(hours=24),
                            StoredEvent.occurred_at <= max(around) + CALL_HOOK_MARGIN)
    else:
        # No call event yet (or ever): only recent hooks, never a scan of the account's whole history.
        query = query.where(StoredEvent.received_at >= utcnow() - CALL_HOOKS_WITHOUT_EVENTS)
    hooks = []
    for event in session.scalars(query.order_by(StoredEvent.occurred_at, StoredEvent.id)):
        data = event.data if isinstance(event.data, dict) else {}
        if data.get("hook") in ("notifications",) or call_key_for_leg(data) == call_key:
            hooks.append(event)
    return hooks


def call_detail(session: Session, account_id: str, call_key: str) -> CallDetail:
    """One call's legs, derived events, deliveries with attempts and matched rules; NotFound if none is known."""
    if not isinstance(call_key, str) or not 0 < len(call_key) <= 250 or "\x00" in call_key:
        raise NotFound("no such call")
    derived_keys = [f"{kind}:{call_key}" for kind in ("call.started", "call.answered", "call.ended", "call.missed")]
    events = list(session.scalars(sa.select(StoredEvent).where(
        StoredEvent.account_id == account_id, StoredEvent.key.in_(derived_keys)).order_by(StoredEvent.id)))
    around = [aware(e.occurred_at) for e in events]
    voicemails = session.scalars(sa.select(StoredEvent).where(
        StoredEvent.account_id == account_id, StoredEvent.type == "voicemail.new",
        StoredEvent.data["call_id"].as_string() == call_key,
        *([StoredEvent.occurred_at >= min(around) - CALL_HOOK_MARGIN,
           StoredEvent.occurred_at <= max(around) + CALL_HOOK_MARGIN] if around else [])).order_by(StoredEvent.id))
    events.extend(voicemails)
    legs = _hooks_of_call(session, account_id, call_key, around)
    if not events and not legs:
        raise NotFound("no such call")
    keys = [e.key for e in events] + [e.key for e in legs]
    deliveries = list(session.scalars(sa.select(Delivery).where(
        Delivery.account_id == account_id, Delivery.event_key.in_(keys)).order_by(Delivery.id)))
    attempts = _attempts_by_delivery(session, [d.id for d in deliveries])
    ended = next((e for e in events if e.type == "call.ended"), None) or next(
        (e for e in events if e.type == "call.missed"), None) or next(
        (e for e in reversed(events) if e.type == "voicemail.new"), None)  # the list's row: the newest message
    return CallDetail(call_key=call_key, summary=_call_summary(ended) if ended else None, legs=legs,
                      events=sorted(events, key=lambda e: (aware(e.occurred_at), e.id)),
                      deliveries=[DeliveryHistory(d, attempts.get(d.id, [])) for d in deliveries],
                      rules=sorted({d.rule_name for d in deliveries}))


# --------------------------------------------------------------------------------------------- overview

@dataclass(frozen=True)
class HookHealth:
    """When a hook kind last arrived for the account (None: never)."""

    kind: str
    last_received_at: datetime | None


@dataclass(frozen=True)
class PausedConnection:
    """A connection whose circuit is open: its actions wait for `connections resume`."""

    name: str
    integration: str
    reason: str


@dataclass(frozen=True)
class Overview:
    """One day of an account, in its time zone: calls per hour and outcome, missed-call rate, deliveries per
    connection and status, hook health and paused connections."""

    day: date
    tz: str
    calls_by_hour: list[dict[str, int]]  # 24 entries (local hours), outcome -> calls ended in that hour
    calls_total: int
    inbound_total: int
    missed_total: int  # inbound calls no person answered (voicemail and busy included), as call.missed says
    missed_rate: float | None  # missed / inbound; None without inbound calls
    deliveries: dict[str, dict[str, int]]  # connection -> status -> deliveries created that day
    hooks: list[HookHealth]
    hooks_reenabled: list[AuditEntry]  # Kazoo disabled a hook and pbxrelay re-enabled it (newest first)
    reconciled_until: datetime | None
    paused_connections: list[PausedConnection]


def _zone(tz: Any) -> ZoneInfo:
    if not isinstance(tz, str) or not 0 < len(tz) <= 64:
        raise ConsoleError("tz: a time zone name such as America/New_York")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConsoleError(f"tz: unknown time zone {tz[:64]!r}") from None


def overview(session: Session, account_id: str, *, day: date | None = None, tz: str | None = None) -> Overview:
    """The account's figures for ``day`` (default today) in ``tz`` (default the account's time zone)."""
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound("no such account")
    tz = tz or account.timezone or "UTC"
    zone = _zone(tz)
    if day is None:
        day = datetime.now(zone).date()
    elif not isinstance(day, date) or isinstance(day, datetime):
        raise ConsoleError("day: a date (YYYY-MM-DD)")
    start = datetime.combine(day, time(0), tzinfo=zone).astimezone(timezone.utc)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).astimezone(timezone.utc)

    by_hour: list[dict[str, int]] = [defaultdict(int) for _ in range(24)]
    calls = inbound = missed = 0
    rows = session.execute(_calls_query(account_id, (
        StoredEvent.occurred_at, _call_outcome(), _call_direction())).where(
        StoredEvent.occurred_at >= start, StoredEvent.occurred_at < end))
    for occurred_at, outcome, direction in rows:
        by_hour[aware(occurred_at).astimezone(zone).hour][outcome or "unknown"] += 1
        calls += 1
        if direction == "inbound":
            inbound += 1
            missed += outcome != "answered"

    deliveries: dict[str, dict[str, int]] = defaultdict(dict)
    for connection, status, count in session.execute(
            sa.select(Delivery.connection, Delivery.status, sa.func.count()).where(
                Delivery.account_id == account_id, Delivery.created_at >= start, Delivery.created_at < end)
            .group_by(Delivery.connection, Delivery.status)):
        deliveries[connection][status] = count

    hooks = []
    for kind in HOOK_EVENT_TYPES:  # one index probe per kind: (account_id, type, id) newest first
        last = session.scalars(sa.select(StoredEvent.received_at).where(
            StoredEvent.account_id == account_id, StoredEvent.type == kind)
            .order_by(StoredEvent.id.desc()).limit(1)).first()
        hooks.append(HookHealth(kind=kind, last_received_at=aware(last) if last else None))
    reenabled = list(session.scalars(sa.select(AuditEntry).where(
        AuditEntry.account_id == account_id, AuditEntry.kind == "hook_reenabled")
        .order_by(AuditEntry.id.desc()).limit(10)))
    paused = [PausedConnection(name=c.name, integration=c.integration, reason=c.paused_reason or "")
              for c in session.scalars(sa.select(Connection).where(
                  Connection.account_id == account_id, Connection.paused_reason.is_not(None))
                  .order_by(Connection.name))]
    return Overview(day=day, tz=tz, calls_by_hour=[dict(h) for h in by_hour], calls_total=calls,
                    inbound_total=inbound, missed_total=missed,
                    missed_rate=(missed / inbound) if inbound else None,
                    deliveries={k: dict(v) for k, v in sorted(deliveries.items())}, hooks=hooks,
                    hooks_reenabled=reenabled,
                    reconciled_until=aware(account.reconciled_until) if account.reconciled_until else None,
                    paused_connections=paused)
