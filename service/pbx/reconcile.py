"""Back-fill call events that never arrived by webhook, from Kazoo's CDRs (reference §6).

A CDR listing has one row per leg. :func:`calls_from_cdrs` turns rows into the same per-call
"facts" the webhook path keeps in Redis, so :func:`service.calls.summarize_call` summarises both,
and :func:`missing_call_events` proposes events under the webhook path's own keys
(``call.ended:<A-leg call id>``), which the store's unique (account, key) constraint deduplicates.

CDR listing column -> leg fact field (the fact shape of ``service.calls``); rows without a call id,
direction, timestamp or duration are skipped:

* ``call_id``, ``other_leg_call_id``, ``caller_id_name``/``_number``, ``callee_id_name``/``_number``,
  ``request``, ``to``, ``from``, ``authorizing_id``, ``owner_id``: same names on every fact;
* ``direction`` (listing) or ``call_direction``: ``call_direction`` ("inbound" marks the A-leg);
* ``hangup_cause``: channel_destroy ``hangup_cause``;
* ``timestamp`` (the leg's start, a string of Gregorian seconds): channel_create ``timestamp``;
* ``timestamp + duration_seconds``: channel_destroy ``timestamp`` (the leg's end);
* ``duration_seconds``, ``billing_seconds`` (strings): the channel_destroy ints of the same name;
* ``duration - billing``: channel_destroy ``ringing_seconds`` (the listing has no ringing column);
* ``billing_seconds > 0`` on a B-leg: a ``channel_bridge`` fact at ``end - billing`` (the answer).

Inferred, because the listing has no ``inception``, ``authorizing_type`` or resource columns:

* an A-leg with no ``authorizing_id`` came in from a carrier: ``inception`` = its ``request``
  (so the call is "inbound"); an A-leg with one was placed by a phone: ``authorizing_type`` "device";
* a B-leg with an ``authorizing_id`` but no ``owner_id`` went to a carrier resource:
  ``authorizing_type`` "resource", ``local_resource_used`` true (so the call is "outbound");
  a B-leg with an ``owner_id`` rang a user's phone: ``authorizing_type`` "device".

A carrier that authorises its inbound legs, or a phone without an owner, is therefore misread;
the full CDR (``custom_channel_vars.resource_type``) would say for sure, at one request per leg.

What CDRs cannot tell: whether a voicemail was left (``voicemail_left``/``voicemail_id``, so a
voicemail-only call's outcome is "missed" where the webhook path says "voicemail"), ``hangup_code``,
``is_internal_leg`` (loopback legs, if Kazoo writes CDRs for them, count as extra legs), and the
exact answer time (answers are inferred from billing seconds).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Iterable

from integrations.virtualpbx.client import CDR_MAX_RANGE, VirtualPBXClient
from integrations.virtualpbx.gregorian import datetime_to_gregorian
from service.events import Event
from service.pbx.calls import call_key_for_leg, summarize_call

log = logging.getLogger(__name__)

# The previous window is re-read this far back: CDRs are written when a leg ends, a little late.
WINDOW_OVERLAP = timedelta(minutes=5)
# The newest minutes are left for the next run, so webhooks (and their call_settle_seconds) come first.
WEBHOOK_GRACE = timedelta(minutes=2)
FIRST_RUN_LOOKBACK = timedelta(hours=1)

_COPIED = ("call_id", "other_leg_call_id", "caller_id_name", "caller_id_number", "callee_id_name",
           "callee_id_number", "request", "to", "from", "authorizing_id", "owner_id")


def _int(value: Any) -> int | None:
    """A CDR number (listings send strings) as an int, or None when absent or unreadable."""
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def _leg_facts(row: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The ``{"<hook>:<leg>": fact}`` entries one CDR row stands for, or None for an unusable row."""
    leg: dict[str, Any] = {key: row[key] for key in _COPIED if row.get(key) not in (None, "")}
    leg["call_direction"] = row.get("call_direction") or row.get("direction")
    if not leg.get("call_id") or not leg["call_direction"]:
        return None
    if leg["call_direction"] == "inbound":
        if leg.get("authorizing_id"):
            leg["authorizing_type"] = "device"
        elif leg.get("request"):
            leg["inception"] = leg["request"]
    elif leg.get("owner_id"):
        leg["authorizing_type"] = "device"
    elif leg.get("authorizing_id"):
        leg.update(authorizing_type="resource", local_resource_used=True)

    started, duration = _int(row.get("timestamp")), _int(row.get("duration_seconds"))
    if started is None or duration is None:
        return None
    billing = _int(row.get("billing_seconds")) or 0
    ended = started + duration
    created = dict(leg, timestamp=started)
    destroyed = dict(leg, timestamp=ended, duration_seconds=duration, billing_seconds=billing,
                     ringing_seconds=max(0, duration - billing), hangup_cause=row.get("hangup_cause"))
    facts = {f"channel_create:{leg['call_id']}": created, f"channel_destroy:{leg['call_id']}": destroyed}
    if leg["call_direction"] != "inbound" and billing:
        # Billing runs from the answer, so a B-leg that billed was answered (bridged) at end - billing.
        facts[f"channel_bridge:{leg['call_id']}"] = dict(leg, timestamp=ended - billing)
    return facts


def calls_from_cdrs(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Group CDR listing rows (one per leg) into ``{call key: facts}`` in summarize_call's shape."""
    calls: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        facts = _leg_facts(row)
        if facts is None:
            continue
        call_key = call_key_for_leg(next(iter(facts.values())))
        if call_key is not None:
            calls.setdefault(call_key, {}).update(facts)
    return calls


def fetch_cdr_calls(client: VirtualPBXClient, created_from: datetime, created_to: datetime, *,
                    page_size: int = 100) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`calls_from_cdrs` for a window, completing calls whose other legs were written outside it."""
    rows = list(client.list_cdrs(created_from, created_to, page_size=page_size))
    calls = calls_from_cdrs(rows)
    window_start = datetime_to_gregorian(created_from)
    incomplete = set()
    for row in rows:
        facts = calls.get(row.get("call_id") or "")
        if facts is None or not row.get("interaction_id"):
            continue  # not an A-leg (B-legs are keyed by their A-leg), or nothing to fetch by
        started = facts[f"channel_create:{row['call_id']}"].get("timestamp")
        other = facts[f"channel_create:{row['call_id']}"].get("other_leg_call_id")
        # A leg's CDR is written when it ends, after its A-leg started: an A-leg that started before
        # the window may have legs before it, and a bridged leg we cannot see was written after it.
        if started is None or started < window_start or (other and f"channel_destroy:{other}" not in facts):
            incomplete.add(row["interaction_id"])
    if not incomplete:
        return calls
    extra = [leg for interaction_id in sorted(incomplete) for leg in client.get_cdr_legs(interaction_id)]
    return calls_from_cdrs([*rows, *extra])


def missing_call_events(account_id: str, cdr_calls: dict[str, dict[str, dict[str, Any]]],
                        known_keys: set[str]) -> list[Event]:
    """``call.ended`` (and ``call.missed``) for ended calls whose ``call.ended`` key is not in ``known_keys``."""
    events: list[Event] = []
    for call_key, facts in cdr_calls.items():
        ended_key = f"call.ended:{call_key}"
        if f"channel_destroy:{call_key}" not in facts or ended_key in known_keys:
            continue
        summary = {**summarize_call(call_key, facts), "source": "cdr"}
        occurred = datetime.fromisoformat(summary["ended_at"])
        events.append(Event(type="call.ended", account_id=account_id, key=ended_key, occurred_at=occurred,
                            data=summary))
        missed_key = f"call.missed:{call_key}"
        if summary["direction"] == "inbound" and summary["outcome"] != "answered" and missed_key not in known_keys:
            events.append(Event(type="call.missed", account_id=account_id, key=missed_key, occurred_at=occurred,
                                data=summary))
    return events


def reconcile_window(last_run: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """``(created_from, created_to)`` for the next CDR pass; ``last_run`` is the previous pass's ``created_to``."""
    if now.tzinfo is None or (last_run is not None and last_run.tzinfo is None):
        raise ValueError("reconcile_window needs timezone-aware datetimes")
    created_to = now - WEBHOOK_GRACE
    created_from = (last_run - WINDOW_OVERLAP) if last_run is not None else (now - FIRST_RUN_LOOKBACK)
    if created_to - created_from > CDR_MAX_RANGE:
        log.warning("CDR reconciliation window %s..%s is longer than Kazoo's %d days; calls before %s are skipped",
                    created_from.isoformat(), created_to.isoformat(), CDR_MAX_RANGE.days,
                    (created_to - CDR_MAX_RANGE).isoformat())
        created_from = created_to - CDR_MAX_RANGE
    # A last_run in the future (clock skew) would give an inverted range, which Kazoo rejects.
    return min(created_from, created_to), created_to
