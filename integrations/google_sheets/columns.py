"""The call-log columns: one spreadsheet row per ``call.ended`` event, built from ``Event.to_json()``.

Event data comes from the phone system and, through caller-ID names, from anyone who can place a
call, so every value is treated as hostile: wrong types degrade to an empty cell, text is clipped to
the Sheets cell limit, and rows are written with ``valueInputOption=RAW`` so a caller name such as
``=IMPORTXML(...)`` stays text instead of becoming a formula.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Literal, Mapping
from zoneinfo import ZoneInfo

from integrations.timeutil import aware

# Google Sheets refuses cells holding more than 50,000 characters (developers.google.com/sheets/api/limits).
CELL_MAX = 50_000

ColumnName = Literal["start_time", "direction", "caller", "caller_number", "caller_name", "callee",
                     "callee_number", "answered_by", "duration", "talk_time", "outcome", "voicemail", "call_id"]

Cell = str | int | float


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    return str(value)[:CELL_MAX]


def _party_field(party: Any, key: str) -> str:
    return _text(party.get(key)) if isinstance(party, Mapping) else ""


def _party(party: Any) -> str:
    """``Name (number)``, or whichever of the two is known."""
    name, number = _party_field(party, "name").strip(), _party_field(party, "number").strip()
    if name and number and name != number:
        return f"{name} ({number})"[:CELL_MAX]
    return name or number


def _seconds(value: Any) -> Cell:
    # A number stays a number so the sheet can sum durations; anything else is left blank.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN
        return ""
    return int(value) if float(value).is_integer() else round(float(value), 3)


def start_time(data: Mapping[str, Any], zone: ZoneInfo) -> str:
    """``started_at`` (ISO UTC) in the account's zone as ``YYYY-MM-DD HH:MM:SS``; blank if unreadable."""
    raw = data.get("started_at")
    if not isinstance(raw, str):
        return ""
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return ""
    return aware(moment).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


_COLUMNS: dict[str, Callable[[Mapping[str, Any], ZoneInfo], Cell]] = {
    "start_time": start_time,
    "direction": lambda d, z: _text(d.get("direction")),
    "caller": lambda d, z: _party(d.get("caller")),
    "caller_number": lambda d, z: _party_field(d.get("caller"), "number"),
    "caller_name": lambda d, z: _party_field(d.get("caller"), "name"),
    "callee": lambda d, z: _party(d.get("callee")),
    "callee_number": lambda d, z: _party_field(d.get("callee"), "number"),
    "answered_by": lambda d, z: _party(d.get("answered_by")),
    "duration": lambda d, z: _seconds(d.get("duration")),
    "talk_time": lambda d, z: _seconds(d.get("talk_time")),
    "outcome": lambda d, z: _text(d.get("outcome")),
    "voicemail": lambda d, z: "yes" if d.get("voicemail_left") is True else "no",
    "call_id": lambda d, z: _text(d.get("call_id")),
}

# Documented order; also the default for an action that names no columns.
ALL_COLUMNS: tuple[str, ...] = tuple(_COLUMNS)


def row_values(data: Mapping[str, Any], columns: list[str] | tuple[str, ...], zone: ZoneInfo) -> list[Cell]:
    """The cells of one call's row, in ``columns`` order."""
    return [_COLUMNS[name](data, zone) for name in columns]
