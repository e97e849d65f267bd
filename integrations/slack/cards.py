"""Block Kit "call cards": one message layout per call/voicemail event, built from ``Event.to_json()``.

Event data comes from the phone system and, through caller-ID names, from anyone who can place a
call, so every value is treated as hostile: wrong types degrade to "unknown", text is escaped for
mrkdwn and clipped to Block Kit's documented per-element limits so Slack never rejects the card.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

# Block Kit limits (docs.slack.dev reference/block-kit/blocks): header text 150 chars, section text
# 3000, each section field 2000, at most 10 fields per section, context text 2000.
HEADER_MAX = 150
SECTION_TEXT_MAX = 3000
FIELD_MAX = 2000
FIELDS_MAX = 10

CALL_CARD_EVENTS = ("call.started", "call.answered", "call.missed", "call.ended", "voicemail.new")

_TITLES = {
    "call.answered": ":telephone_receiver: Call answered",
    "call.missed": ":no_entry: Missed call",
    "call.ended": ":white_check_mark: Call ended",
    "voicemail.new": ":mailbox_with_mail: New voicemail",
}


def call_card(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Build the Block Kit blocks for a call.* or voicemail.new event; ValueError for other events."""
    etype = event.get("type") if isinstance(event, Mapping) else None
    if etype not in CALL_CARD_EVENTS:
        raise ValueError(f"layout 'call_card' needs one of {', '.join(CALL_CARD_EVENTS)} events, got {etype!r}")
    data = event.get("data")
    data = data if isinstance(data, Mapping) else {}
    if etype == "voicemail.new":
        return _voicemail_card(data)
    return _call_card(etype, data)


def _call_card(etype: str, data: Mapping[str, Any]) -> list[dict[str, Any]]:
    direction = _text(data.get("direction")) or "unknown"
    if etype == "call.started":
        title = ":arrow_lower_left: Incoming call" if direction == "inbound" else ":arrow_upper_right: Outgoing call"
    else:
        title = _TITLES[etype]
    fields = [("Caller", _party(data.get("caller"))), ("Callee", _party(data.get("callee"))),
              ("Direction", escape_mrkdwn(direction))]
    if etype in ("call.answered", "call.ended") and data.get("answered_by"):
        fields.append(("Answered by", _party(data.get("answered_by"))))
    if etype in ("call.missed", "call.ended"):
        fields.append(("Duration", _duration(data.get("duration"))))
        fields.append(("Outcome", escape_mrkdwn(_text(data.get("outcome")) or "unknown")))
    if etype == "call.ended":
        fields.append(("Talk time", _duration(data.get("talk_time"))))
    if etype == "call.missed":
        fields.append(("Voicemail left", "yes" if data.get("voicemail_left") is True else "no"))
    fields.append(("Started", _when(data.get("started_at"))))
    if etype == "call.ended" and data.get("ended_at"):
        fields.append(("Ended", _when(data.get("ended_at"))))
    return [_header(title), _fields_section(fields), _context(f"Call ID: {_text(data.get('call_id')) or 'unknown'}")]


def _voicemail_card(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    mailbox = data.get("mailbox")
    if isinstance(mailbox, Mapping):  # the mailbox may arrive as {id, name, mailbox} or as a plain id
        mailbox = mailbox.get("name") or mailbox.get("mailbox") or mailbox.get("id")
    mailbox = _text(mailbox) or _text(data.get("vmbox_id")) or "unknown"
    fields = [("From", _party(data.get("caller"))), ("Mailbox", escape_mrkdwn(mailbox)),
              ("Length", _duration(data.get("length_seconds")))]
    transcript = _text(data.get("transcript"))
    body = "*Transcript*\n" + (_quote(escape_mrkdwn(transcript)) if transcript else "_No transcript available._")
    return [_header(_TITLES["voicemail.new"]), _fields_section(fields),
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(body, SECTION_TEXT_MAX)}},
            _context(f"Voicemail ID: {_text(data.get('voicemail_id')) or 'unknown'}")]


def _header(title: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": _clip(title, HEADER_MAX), "emoji": True}}


def _fields_section(fields: list[tuple[str, str]]) -> dict[str, Any]:
    return {"type": "section", "fields": [{"type": "mrkdwn", "text": _clip(f"*{label}*\n{value}", FIELD_MAX)}
                                          for label, value in fields[:FIELDS_MAX]]}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(escape_mrkdwn(text), FIELD_MAX)}]}


def _text(value: Any) -> str:
    """A display string for a scalar; containers and None become "" (they are not meant to be shown)."""
    if value is None or isinstance(value, (Mapping, list, tuple, set)):
        return ""
    return str(value).strip()


def _party(value: Any) -> str:
    """'Name (number)', 'number' or 'Unknown' for a {name, number} dict (or a bare number string)."""
    if isinstance(value, Mapping):
        name, number = _text(value.get("name")), _text(value.get("number"))
    else:
        name, number = "", _text(value)
    if name and number and name != number:
        return f"{escape_mrkdwn(name)} ({escape_mrkdwn(number)})"
    return escape_mrkdwn(name or number) or "Unknown"


def _duration(value: Any) -> str:
    """Seconds as '1h 02m 03s' / '2m 05s' / '7s'; anything that is not a non-negative number -> 'unknown'."""
    try:
        seconds = int(float(value))
    except (TypeError, ValueError, OverflowError):
        return "unknown"
    if seconds < 0:
        return "unknown"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _when(value: Any) -> str:
    """An ISO time as Slack's <!date> token, so each reader sees it in their own timezone."""
    raw = _text(value)
    if not raw:
        return "unknown"
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return escape_mrkdwn(raw)
    if moment.tzinfo is None:  # our events carry UTC; a naive value must not be read as server-local time
        return escape_mrkdwn(raw)
    fallback = moment.strftime("%Y-%m-%d %H:%M UTC") if moment.utcoffset().total_seconds() == 0 else raw
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time}}|{escape_mrkdwn(fallback)}>"


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control (so '<!channel>' stays literal)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines() or [""])


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
