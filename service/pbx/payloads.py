"""Kazoo webhook deliveries -> normalised payloads -> raw ``virtualpbx.<hook>`` events.

Kazoo delivers a hook in one of three forms (reference §4.1): a GET with the payload in the query
string, a form-urlencoded POST with bracket nesting (``custom_channel_vars[x]=y``, ``k[]=v``), or a
JSON POST. Everything arrives untrusted: parsing is bounded in size, depth and key count, and any
failure is a :class:`MalformedPayload` with a reason the operator can read in the quarantine.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl

from integrations.virtualpbx.gregorian import gregorian_to_datetime
from service.events import Event

MAX_DEPTH = 8
MAX_KEYS = 2000

CHANNEL_HOOKS = ("channel_create", "channel_answer", "channel_bridge", "channel_destroy")
KNOWN_HOOKS = CHANNEL_HOOKS + ("notifications", "parking", "object", "sms")

# Fields Kazoo sends as integers, which arrive as strings in samples and in every form/GET delivery.
INT_FIELDS = frozenset({
    "timestamp", "duration_seconds", "billing_seconds", "ringing_seconds", "voicemail_length",
    "voicemail_timestamp", "max_message_count", "message_count", "parking_slot", "retries",
})
BOOL_FIELDS = frozenset({
    "call_forwarded", "is_internal_leg", "emergency_resource_used", "local_resource_used",
    "call_bridged", "message_left",
})
_BRACKET_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


class MalformedPayload(ValueError):
    """A delivery that cannot be read as a Kazoo payload; the message says why."""


def parse_bracket_pairs(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Nest ``a[b][c]=v`` / ``k[]=v`` pairs (PHP/Kazoo style) into dicts and lists."""
    if len(pairs) > MAX_KEYS:
        raise MalformedPayload(f"too many fields ({len(pairs)} > {MAX_KEYS})")
    root: dict[str, Any] = {}
    for raw_key, value in pairs:
        match = _BRACKET_KEY.match(raw_key)
        if not match:
            raise MalformedPayload(f"unreadable field name {raw_key[:80]!r}")
        path = [match.group(1)] + re.findall(r"\[([^\[\]]*)\]", match.group(2))
        if len(path) > MAX_DEPTH:
            raise MalformedPayload(f"field {raw_key[:80]!r} nests deeper than {MAX_DEPTH}")
        _insert(root, path, value, raw_key)
    return root


def _insert(node: dict[str, Any], path: list[str], value: str, raw_key: str) -> None:
    if "" in path[:-1] or path[0] == "":
        raise MalformedPayload(f"field {raw_key[:80]!r}: '[]' may only end a name")
    appends = path[-1] == ""
    names = path[:-1] if appends else path
    for part in names[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise MalformedPayload(f"field {raw_key[:80]!r} conflicts with a plain value")
        node = child
    last = names[-1]
    existing = node.get(last)
    if appends:
        if existing is None:
            node[last] = [value]
        elif isinstance(existing, list):
            existing.append(value)
        else:
            raise MalformedPayload(f"field {raw_key[:80]!r} mixes a list with another value")
    elif existing is None:
        node[last] = value
    else:
        raise MalformedPayload(f"field {raw_key[:80]!r} given twice or conflicts with nested fields")


def parse_delivery(*, method: str, content_type: str, body: bytes, query_string: str) -> dict[str, Any]:
    """Read one delivery (GET query, form POST or JSON POST) into a payload dict."""
    method = method.upper()
    if method == "GET" or (not body and query_string):
        return _parse_urlencoded(query_string)
    ctype = (content_type or "").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPayload("body is not UTF-8") from None
    if ctype == "application/json" or ctype.endswith("+json") or (not ctype and text.lstrip().startswith("{")):
        return _parse_json(text)
    if ctype in ("application/x-www-form-urlencoded", "multipart/form-data", ""):
        return _parse_urlencoded(text)
    raise MalformedPayload(f"unsupported content type {ctype[:80]!r}")


def _parse_urlencoded(text: str) -> dict[str, Any]:
    if not text.strip():
        raise MalformedPayload("empty payload")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_KEYS)
    except ValueError as exc:
        raise MalformedPayload(f"unreadable form body: {exc}") from None
    if not pairs:
        raise MalformedPayload("no fields in form body")
    return parse_bracket_pairs(pairs)


def _parse_json(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedPayload(f"invalid JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise MalformedPayload(f"JSON body is a {type(doc).__name__}, not an object")
    if _depth(doc) > MAX_DEPTH + 4:  # JSON notifications nest `notify.custom_channel_vars` legitimately
        raise MalformedPayload("JSON body nests too deeply")
    return doc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH + 4:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def normalise_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """Lower-case top-level keys, merge ``custom_data`` over the payload, and coerce ints and booleans."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        lower = str(key).lower()
        # An exactly-lower-case key wins over a differently cased twin (`caller_id_Number`).
        if lower not in out or key == lower:
            out[lower] = value
    custom = out.pop("custom_data", None)
    if isinstance(custom, dict):
        out.update({str(k).lower(): v for k, v in custom.items()})
    for key in INT_FIELDS & out.keys():
        out[key] = _to_int(out[key])
    for key in BOOL_FIELDS & out.keys():
        out[key] = _to_bool(out[key])
    return out


def _to_int(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value.strip()):
        return int(value.strip())
    return value


def _to_bool(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def classify(payload: dict[str, Any]) -> tuple[str, str | None]:
    """Name the hook (``channel_create`` .. ``sms``, or ``unknown``) and its sub-type, if any."""
    hook = payload.get("hook_event")
    if isinstance(hook, str) and hook.lower() in CHANNEL_HOOKS:
        return hook.lower(), None
    event_name = payload.get("event_name")
    if payload.get("event_category") == "notification" or (
            isinstance(event_name, str) and event_name.islower() and "app_name" in payload):
        return "notifications", str(event_name or "unknown").lower()
    if isinstance(event_name, str) and event_name.upper().startswith("PARK_"):
        return "parking", event_name.lower()
    if {"id", "action", "type"} <= payload.keys():
        return "object", f"{payload['type']}.{payload['action']}"
    if {"from", "to", "body"} <= payload.keys() and not isinstance(payload.get("to"), list):
        return "sms", None
    return "unknown", None


def _occurred_at(payload: dict[str, Any], received_at: datetime) -> datetime:
    for field in ("timestamp", "voicemail_timestamp"):
        if field in payload:
            try:
                return gregorian_to_datetime(payload[field])
            except (TypeError, ValueError, OverflowError):
                continue
    return received_at


def event_key(hook: str, subtype: str | None, payload: dict[str, Any], received_at: datetime) -> str:
    """Derive the idempotency key Kazoo does not send: natural ids where they exist, else a content hash."""
    def natural(*fields: str) -> str | None:
        values = [payload.get(f) for f in fields]
        if all(isinstance(v, (str, int)) and str(v) for v in values):
            return ":".join(str(v) for v in values)
        return None

    ident = None
    if hook in CHANNEL_HOOKS:
        ident = natural("call_id")
    elif hook == "notifications" and subtype in ("voicemail_new", "voicemail_saved"):
        ident = natural("voicemail_id")
    elif hook == "notifications" and subtype == "missed_call":
        ident = natural("call_id")
    elif hook == "parking":
        ident = natural("call_id", "parking_slot")
    elif hook == "sms":
        ident = natural("id")
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]
    if ident is None:
        ident = digest
        if hook == "object":
            # Object hooks carry no timestamp; the same document edited twice sends identical bodies.
            # Identical bodies within one 10-second slot are one event, later ones are new edits.
            ident += f":{int(received_at.timestamp()) // 10}"
    return f"virtualpbx.{hook}:{subtype or '-'}:{ident}"


def to_hook_event(payload: dict[str, Any], *, account_id: str,
                  received_at: datetime | None = None) -> Event:
    """Normalise a parsed payload into the raw ``virtualpbx.<hook>`` event (unknown: ``virtualpbx.unknown``)."""
    received_at = received_at or datetime.now(timezone.utc)
    normalised = normalise_payload(payload)
    hook, subtype = classify(normalised)
    data = dict(normalised)
    data["hook"] = hook
    if subtype:
        data["subtype"] = subtype
    return Event(type=f"virtualpbx.{hook}", account_id=account_id,
                 key=event_key(hook, subtype, normalised, received_at),
                 occurred_at=_occurred_at(normalised, received_at), data=data)
