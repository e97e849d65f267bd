"""Calls, not legs: correlate Kazoo's per-leg hooks into the call-level events users write rules against.

Kazoo sends one hook per leg (reference §4.6). A call is identified by its A-leg: the leg entering
the switch, whose ``call_direction`` is ``inbound`` (relative to the switch). Every other leg names
the A-leg in ``other_leg_call_id``. Each leg hook is stored in a per-call Redis hash (field
``<hook>:<leg call id>``), so the state is a *set* of facts: duplicates change nothing and arrival
order does not matter. Every call-level event is derived from the whole set by the pure function
:func:`summarize_call`. Its key is fixed per call (``call.ended:<call id>``), and the events table's
unique (account, key) constraint makes it happen at most once, even across Redis restarts.

Semantics (the README repeats them):

- ``call.started``: the first leg hook of a call (normally the A-leg's ``channel_create``).
- ``call.answered``: the first ``channel_bridge`` or ``channel_answer`` of a leg other than the A-leg
  (a phone or the far end picked up), or an A-leg ``channel_bridge`` once its B-leg was seen; a call
  bridged only by A-leg hooks gets it at ``call.ended`` time. An A-leg answer alone is the PBX
  answering (voicemail, IVR) and is not a person.
- ``call.ended``: once, ``call_settle_seconds`` after the A-leg's ``channel_destroy`` (late legs and
  the voicemail notification arrive inside that window), with direction from the user's view,
  caller, callee, who answered, duration, talk time and outcome.
- ``call.missed``: with ``call.ended``, for an inbound call that reached no person, including one
  answered only by voicemail; or from Kazoo's ``missed_call`` notification when no leg of that call
  was seen. Both share the key ``call.missed:<call id>``, so a call is missed at most once.
- ``voicemail.new``: from the ``voicemail_new`` notification, once per ``voicemail_id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from integrations.virtualpbx.gregorian import gregorian_to_datetime
from service.events import Event
from service.pbx.payloads import CHANNEL_HOOKS

# The leg fields kept in the call window: enough to summarise, small enough to store per leg.
_LEG_FIELDS = (
    "call_id", "other_leg_call_id", "call_direction", "caller_id_name", "caller_id_number",
    "callee_id_name", "callee_id_number", "request", "to", "from", "inception", "authorizing_type",
    "authorizing_id", "owner_id", "local_resource_used", "is_internal_leg", "timestamp",
    "hangup_cause", "hangup_code", "duration_seconds", "billing_seconds", "ringing_seconds",
    "other_leg_destination_number",
)


def call_key_for_leg(data: dict[str, Any]) -> str | None:
    """The call a leg belongs to: its own id for an A-leg, else the A-leg it names; None if unknown."""
    if data.get("is_internal_leg") is True:
        return None  # loopback legs duplicate real ones
    call_id = data.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        return None
    if data.get("call_direction") == "inbound":
        return call_id
    other = data.get("other_leg_call_id")
    return other if isinstance(other, str) and other else None


def _user_part(uri: Any) -> str | None:
    if isinstance(uri, str) and uri:
        return uri.split("@", 1)[0] or None
    return None


def _party(name: Any, number: Any) -> dict[str, Any]:
    return {"name": name or None, "number": number or None}


def _ts(value: Any) -> datetime | None:
    try:
        return gregorian_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None


def summarize_call(call_key: str, facts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Derive the call-level view from every leg fact seen so far (order-free, duplicate-free)."""
    legs, voicemails = _group_facts(facts)
    a_leg = _leg_info(legs[call_key]) if call_key in legs else {}
    b_legs = {leg_id: _leg_info(hooks) for leg_id, hooks in legs.items() if leg_id != call_key}
    answered_id = _answered_leg(call_key, legs, a_leg, b_legs)
    answered = b_legs.get(answered_id) if answered_id else None
    bridged = answered_id is not None
    direction = _direction(a_leg, b_legs)
    caller, callee = _parties(direction, a_leg, b_legs, answered)
    a_destroy = legs.get(call_key, {}).get("channel_destroy", {})
    voicemail_left = bool(voicemails)
    return {
        "call_id": call_key,
        "direction": direction,
        "caller": caller,
        "callee": callee,
        "answered_by": _answered_by(a_leg, answered, bridged),
        **_timing(legs, a_leg, a_destroy, answered, bridged),
        "ringing": a_destroy.get("ringing_seconds") if isinstance(a_destroy.get("ringing_seconds"), int) else None,
        "outcome": _outcome(direction, a_destroy, bridged, voicemail_left),
        "voicemail_left": voicemail_left,
        "voicemail_id": voicemails[0].get("voicemail_id") if voicemails else None,
        "hangup_cause": a_destroy.get("hangup_cause"),
        "legs": len(legs),
        "owner_id": a_leg.get("owner_id") or (answered or {}).get("owner_id"),
    }


def _group_facts(facts: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, dict[str, Any]]], list[dict]]:
    """({leg id: {channel hook: fact}}, [voicemail facts]) from the call window's ``kind:id`` fields."""
    legs: dict[str, dict[str, dict[str, Any]]] = {}
    voicemails = []
    for field, fact in facts.items():
        kind, _, ident = field.partition(":")
        if kind == "voicemail":
            voicemails.append(fact)
        elif kind in CHANNEL_HOOKS:
            legs.setdefault(ident, {})[kind] = fact
    return legs, voicemails


def _leg_info(hooks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One leg's facts merged over its hooks; later hooks carry the fullest view of the leg."""
    merged: dict[str, Any] = {}
    for hook in CHANNEL_HOOKS:
        merged.update({k: v for k, v in hooks.get(hook, {}).items() if v not in (None, "")})
    return merged


def _answered_leg(call_key: str, legs: dict[str, dict[str, Any]], a_leg: dict[str, Any],
                  b_legs: dict[str, dict[str, Any]]) -> str | None:
    """The B-leg that answered or bridged; "" when only the A-leg's hooks say it bridged; None when unanswered."""
    answered_id = next((i for i in b_legs if "channel_bridge" in legs[i] or "channel_answer" in legs[i]), None)
    if answered_id is None and call_key in legs and "channel_bridge" in legs[call_key]:
        answered_id = a_leg.get("other_leg_call_id") if a_leg.get("other_leg_call_id") in b_legs else ""
    return answered_id


def _direction(a_leg: dict[str, Any], b_legs: dict[str, dict[str, Any]]) -> str:
    """Inbound (the A-leg came from a carrier), outbound (a B-leg used a carrier) or internal, from the user's view."""
    if a_leg.get("inception"):
        return "inbound"
    if any(b.get("local_resource_used") is True or b.get("authorizing_type") == "resource" for b in b_legs.values()):
        return "outbound"
    if a_leg or b_legs:
        return "internal" if a_leg.get("authorizing_type") in ("device", "user", "mobile") else "inbound"
    return "inbound"


def _parties(direction: str, a_leg: dict[str, Any], b_legs: dict[str, dict[str, Any]],
             answered: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(caller, callee): an inbound call's callee is the number dialled, an outbound one's the leg it reached."""
    any_leg = a_leg or next(iter(b_legs.values()), {})
    caller = _party(any_leg.get("caller_id_name"), any_leg.get("caller_id_number"))
    if direction == "inbound":
        dialled = _user_part(a_leg.get("request")) or _user_part(a_leg.get("to"))
        callee = _party((answered or {}).get("callee_id_name") or a_leg.get("callee_id_name"),
                        dialled or a_leg.get("callee_id_number"))
    else:
        target = answered or next(iter(b_legs.values()), {})
        callee = _party(target.get("callee_id_name"),
                        target.get("callee_id_number") or _user_part(a_leg.get("request")))
    return caller, callee


def _answered_by(a_leg: dict[str, Any], answered: dict[str, Any] | None, bridged: bool) -> dict[str, Any] | None:
    """Who picked up: the answering B-leg's callee, or only the number when the A-leg alone says it bridged."""
    if answered:
        return {"name": answered.get("callee_id_name") or None, "number": answered.get("callee_id_number") or None,
                "user_id": answered.get("owner_id") or None}
    if bridged:
        return {"name": None, "number": a_leg.get("other_leg_destination_number"), "user_id": None}
    return None


def _timing(legs: dict[str, dict[str, Any]], a_leg: dict[str, Any], a_destroy: dict[str, Any],
            answered: dict[str, Any] | None, bridged: bool) -> dict[str, Any]:
    """started_at (the first leg's creation), ended_at (the A-leg's destroy), duration and talk_time."""
    created = [t for t in (_ts(leg.get("channel_create", {}).get("timestamp")) for leg in legs.values()) if t]
    started_at = min(created) if created else _ts(a_leg.get("timestamp"))
    ended_at = _ts(a_destroy.get("timestamp"))
    duration = a_destroy.get("duration_seconds")
    if not isinstance(duration, int):
        duration = int((ended_at - started_at).total_seconds()) if started_at and ended_at else 0
    talk_time = 0
    if answered:
        talk_time = answered.get("billing_seconds") if isinstance(answered.get("billing_seconds"), int) else 0
    elif bridged and isinstance(a_destroy.get("billing_seconds"), int):
        talk_time = a_destroy["billing_seconds"]
    return {"started_at": started_at.isoformat() if started_at else None,
            "ended_at": ended_at.isoformat() if ended_at else None, "duration": duration, "talk_time": talk_time}


def _outcome(direction: str, a_destroy: dict[str, Any], bridged: bool, voicemail_left: bool) -> str:
    """answered, voicemail, busy, or missed (inbound) / no_answer (outbound and internal)."""
    if bridged:
        return "answered"
    if voicemail_left:
        return "voicemail"
    if a_destroy.get("hangup_cause") == "USER_BUSY":
        return "busy"
    return "missed" if direction == "inbound" else "no_answer"


def voicemail_data(data: dict[str, Any]) -> dict[str, Any]:
    """The ``voicemail.new`` view of a ``voicemail_new`` notification."""
    length_ms = data.get("voicemail_length")
    left_at = _ts(data.get("voicemail_timestamp")) or _ts(data.get("timestamp"))
    return {
        "call_id": data.get("call_id"),
        "caller": _party(data.get("caller_id_name"), data.get("caller_id_number") or data.get("from_user")),
        "callee": _party(None, data.get("to_user")),
        "mailbox": data.get("to_user"),
        "vmbox_id": data.get("voicemail_box"),
        "voicemail_id": data.get("voicemail_id"),
        "length_seconds": round(length_ms / 1000) if isinstance(length_ms, int) else None,
        "transcript": data.get("voicemail_transcription") or None,
        "left_at": left_at.isoformat() if left_at else None,
    }


def missed_from_notification(data: dict[str, Any]) -> dict[str, Any]:
    """The ``call.missed`` view of Kazoo's ``missed_call`` notification (used when no leg was seen)."""
    notify = data.get("notify") if isinstance(data.get("notify"), dict) else {}
    ended = _ts(data.get("timestamp"))
    duration = notify.get("duration_seconds")
    return {
        "call_id": data.get("call_id"),
        "direction": "inbound",
        "caller": _party(data.get("caller_id_name"), data.get("caller_id_number") or data.get("from_user")),
        "callee": _party(None, data.get("to_user")),
        "answered_by": None,
        "started_at": None,
        "ended_at": ended.isoformat() if ended else None,
        "duration": duration if isinstance(duration, int) else 0,
        "talk_time": 0,
        "ringing": notify.get("ringing_seconds") if isinstance(notify.get("ringing_seconds"), int) else None,
        "outcome": "voicemail" if data.get("message_left") is True else "missed",
        "voicemail_left": data.get("message_left") is True,
        "voicemail_id": None,
        "hangup_cause": notify.get("hangup_cause"),
        "legs": 0,
        "owner_id": None,
    }


@dataclass(frozen=True)
class Correlation:
    """What one raw hook produced: call-level events to run now, and a call to finalise later."""

    events: list[Event]
    finalize_call: str | None = None


def _decoded(stored: dict[str, str]) -> dict[str, dict[str, Any]]:
    """A call's facts as kept in its Redis hash (JSON values by field), decoded."""
    return {field: json.loads(value) for field, value in stored.items()}


class RedisCallWindow:
    """Leg facts per call in a Redis hash shared by every worker, kept for the call window."""

    def __init__(self, client: redis.Redis, *, namespace: str, window_seconds: int) -> None:
        self._redis = client
        self._ns = namespace
        self._ttl = window_seconds

    def _key(self, account_id: str, call_key: str) -> str:
        return f"{self._ns}:call:{account_id}:{call_key}"

    def facts(self, account_id: str, call_key: str) -> dict[str, dict[str, Any]]:
        """Every fact seen for the call, by field."""
        return _decoded(self._redis.hgetall(self._key(account_id, call_key)))

    def remember(self, account_id: str, call_key: str, field: str, fact: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Keep a fact (the first copy of a field wins), extend the window, and return every fact of the call
        then: one round trip, where remembering and then reading took two."""
        key = self._key(account_id, call_key)
        pipe = self._redis.pipeline()
        pipe.hsetnx(key, field, json.dumps(fact, sort_keys=True, default=str))
        pipe.expire(key, self._ttl)
        pipe.hgetall(key)
        return _decoded(pipe.execute()[-1])

    def exists(self, account_id: str, call_key: str) -> bool:
        """Whether any fact of the call was seen."""
        return bool(self._redis.exists(self._key(account_id, call_key)))


class MemoryCallWindow:
    """Leg facts in this process's memory: for the dry run, which must derive exactly what production would."""

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def facts(self, account_id: str, call_key: str) -> dict[str, dict[str, Any]]:
        """Every fact seen for the call, by field (JSON round-tripped, as Redis would hand it back)."""
        return {f: json.loads(json.dumps(v, default=str))
                for f, v in self._calls.get((account_id, call_key), {}).items()}

    def remember(self, account_id: str, call_key: str, field: str, fact: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Keep a fact (the first copy of a field wins); every fact of the call then."""
        self._calls.setdefault((account_id, call_key), {}).setdefault(field, fact)
        return self.facts(account_id, call_key)

    def exists(self, account_id: str, call_key: str) -> bool:
        """Whether any fact of the call was seen."""
        return (account_id, call_key) in self._calls


class CallCorrelator:
    """Stores leg facts in a call window and proposes call events (the store de-duplicates)."""

    def __init__(self, window: RedisCallWindow | MemoryCallWindow) -> None:
        self._window = window

    def _event(self, raw: Event, kind: str, call_key: str, data: dict[str, Any]) -> Event:
        return Event(type=kind, account_id=raw.account_id, key=f"{kind}:{call_key}",
                     occurred_at=raw.occurred_at, data=data)

    def observe(self, raw: Event) -> Correlation:
        """Feed one raw ``virtualpbx.*`` event; return the call-level events it completes."""
        data = raw.data
        hook = data.get("hook")
        if hook in CHANNEL_HOOKS:
            return self._observe_leg(raw, hook)
        if hook == "notifications" and data.get("subtype") == "voicemail_new":
            return self._observe_voicemail(raw)
        if hook == "notifications" and data.get("subtype") == "missed_call":
            return self._observe_missed_notification(raw)
        return Correlation(events=[])

    def _observe_leg(self, raw: Event, hook: str) -> Correlation:
        data = raw.data
        call_key = call_key_for_leg(data)
        if call_key is None:
            return Correlation(events=[])
        fact = {k: data[k] for k in _LEG_FIELDS if k in data}
        facts = self._window.remember(raw.account_id, call_key, f"{hook}:{data['call_id']}", fact)
        is_a_leg = data["call_id"] == call_key
        events: list[Event] = []
        person_answered = hook == "channel_bridge" or (hook == "channel_answer" and not is_a_leg)
        if hook == "channel_create" or person_answered:
            # An A-leg bridge names the B-leg, but the B-leg's own hooks (who picked up) may still be in
            # another worker's hands: then wait for them, or for finalize(), rather than answer anonymously.
            other = f":{data.get('other_leg_call_id')}"
            if person_answered and is_a_leg and not any(field.endswith(other) for field in facts):
                return Correlation(events=[], finalize_call=None)
            summary = summarize_call(call_key, facts)
            kind = "call.answered" if person_answered else "call.started"
            events.append(self._event(raw, kind, call_key, summary))
        finalize = call_key if hook == "channel_destroy" and is_a_leg else None
        return Correlation(events=events, finalize_call=finalize)

    def _observe_voicemail(self, raw: Event) -> Correlation:
        data = raw.data
        vm = voicemail_data(data)
        call_key = data.get("call_id")
        if isinstance(call_key, str) and call_key:
            self._window.remember(raw.account_id, call_key, f"voicemail:{vm['voicemail_id']}", vm)
        ident = vm["voicemail_id"] or raw.key
        return Correlation(events=[Event(type="voicemail.new", account_id=raw.account_id,
                                         key=f"voicemail.new:{ident}", occurred_at=raw.occurred_at,
                                         data=vm)])

    def _observe_missed_notification(self, raw: Event) -> Correlation:
        call_key = raw.data.get("call_id")
        if not isinstance(call_key, str) or not call_key:
            return Correlation(events=[])
        if self._window.exists(raw.account_id, call_key):
            return Correlation(events=[])  # legs were seen: finalize() decides, with fuller data
        return Correlation(events=[self._event(raw, "call.missed", call_key, missed_from_notification(raw.data))])

    def finalize(self, account_id: str, call_key: str) -> list[Event]:
        """Propose ``call.ended`` (and ``call.missed`` when it applies) from every fact seen."""
        facts = self._window.facts(account_id, call_key)
        if not facts:
            return []
        summary = summarize_call(call_key, facts)
        ended_at = summary["ended_at"] or summary["started_at"]
        occurred = datetime.fromisoformat(ended_at) if ended_at else datetime.now().astimezone()
        events = [Event(type="call.ended", account_id=account_id, key=f"call.ended:{call_key}",
                        occurred_at=occurred, data=summary)]
        b_leg_seen = any(field.startswith("channel_") and field.split(":", 1)[1] != call_key for field in facts)
        if summary["outcome"] == "answered" and not b_leg_seen:
            # Normally emitted when the B-leg answered; here for a call bridged only in A-leg hooks.
            events.insert(0, Event(type="call.answered", account_id=account_id, key=f"call.answered:{call_key}",
                                   occurred_at=occurred, data=summary))
        if summary["direction"] == "inbound" and summary["outcome"] != "answered":
            events.append(Event(type="call.missed", account_id=account_id, key=f"call.missed:{call_key}",
                                occurred_at=occurred, data=summary))
        return events
