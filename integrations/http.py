"""HTTP details shared by the integration clients."""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from integrations.timeutil import aware

# No vendor has a reason to make us wait longer than an hour; a bigger hint is capped, not ignored.
LONGEST_RETRY_AFTER = 3600.0


def retry_after_seconds(source: str | Mapping[str, Any] | None, *,
                        longest: float = LONGEST_RETRY_AFTER) -> float | None:
    """Seconds a Retry-After asks for, from the header value or a header map; None when absent or unreadable.

    Takes delta-seconds or an HTTP date (RFC 9110 §10.2.3); a zero, negative, past or garbage value is None
    (the caller picks its vendor's default), and a value over ``longest`` is capped to it.
    """
    value = _header(source, "retry-after") if isinstance(source, Mapping) else source
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (aware(parsedate_to_datetime(value)) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError, IndexError):
            return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return min(seconds, longest)


# Keep-alive sessions kept per process; the least recently used is closed beyond this many.
MAX_POOLED_SESSIONS = 256
_sessions: OrderedDict[tuple, requests.Session] = OrderedDict()
_sessions_lock = threading.Lock()
_sessions_pid = os.getpid()


def credential_key(*secrets: str) -> str:
    """A stable, non-reversible key for a credential (to key pooled sessions and caches without the secret)."""
    return hashlib.sha256("\x00".join(secrets).encode()).hexdigest()


def pooled_session(key: tuple, make: Callable[[], requests.Session]) -> requests.Session:
    """This thread's keep-alive session for ``key`` (vendor, credential key, URL policy), made on first use.

    One session per vendor, credential and thread: its TCP/TLS connections are reused from one action to the
    next instead of a new connection per message, and no two credentials share a session (nor its cookies).
    Per thread because requests does not promise a Session is thread-safe (psf/requests#2766), and because 32
    action threads sharing one session would overflow its pool of 10 connections per host, each overflow a
    new connection thrown away after its one request. A forked child starts with none (its parent's sockets
    are not its own); beyond MAX_POOLED_SESSIONS the least recently used is closed."""
    global _sessions_pid
    key = (*key, threading.get_ident())
    with _sessions_lock:
        if _sessions_pid != os.getpid():
            _sessions.clear()
            _sessions_pid = os.getpid()
        session = _sessions.get(key)
        if session is not None:
            _sessions.move_to_end(key)
            return session
        session = _sessions[key] = make()
        while len(_sessions) > MAX_POOLED_SESSIONS:
            _sessions.popitem(last=False)[1].close()
        return session


def _header(headers: Mapping[str, Any], name: str) -> Any:
    """A header's value from any header map (case-insensitive; slack_sdk hands over lists of values)."""
    for key, raw in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return raw[0] if isinstance(raw, (list, tuple)) and raw else raw
    return None
