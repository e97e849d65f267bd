"""A small, strict client for the VirtualPBX "Dash" API (Kazoo Crossbar v2).

What it takes care of so callers do not have to:

* authentication (API key or user credentials) with one token per account cached in Redis and shared
  by every worker, refreshed before it expires under a short Redis lock, and one transparent re-auth
  when a call answers 401;
* pacing through the shared token bucket Kazoo enforces per client IP + account (100 tokens, 10/s,
  35 per auth call), so a fleet of workers never trips 429 in the first place;
* turning every failure into exactly one of the contract's error kinds (see ``errors.py``);
* Kazoo envelopes, opaque pagination keys, Gregorian timestamps and verb tunnelling.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import Message
from typing import Any, Callable, Iterator
from urllib.parse import quote

import requests

from integrations.base import scrub
from integrations.http import retry_after_seconds
from integrations.ratelimit import RateLimiter
from integrations.virtualpbx.gregorian import datetime_to_gregorian

from . import errors as E

log = logging.getLogger(__name__)

# Kazoo's default bucket per client IP + account (crossbar rate_limiting.md); auth calls cost 35.
BUCKET_CAPACITY = 100
BUCKET_REFILL_PER_SECOND = 10
AUTH_COST = 35
CALL_COST = 1
# Waiting longer than this inside a worker blocks it; past it we hand the wait to the retry machinery.
MAX_PACING_SLEEP = 2.0
# Kazoo sends no Retry-After with 429; one second lets the bucket refill ten tokens.
DEFAULT_429_RETRY_AFTER = 1.0
# Non-JWT tokens carry no expiry; Kazoo's default token_auth_expiry_s is 3600.
DEFAULT_TOKEN_LIFETIME = 3600.0
MAX_REFRESH_MARGIN = 300.0
# Our CDR window is a little narrower than Kazoo's 31 days + 1 hour, so a request never hits the edge.
CDR_MAX_RANGE = timedelta(days=31)
_TUNNELLED_VERBS = frozenset({"PUT", "DELETE", "PATCH"})
_NO_DATA = object()

# Deletes KEYS[1] only if it still holds ARGV[1]: a worker holding a stale token cannot throw away the
# fresh one another worker just stored, and a lock is released only by its owner.
_DELETE_IF_EQUALS = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


@dataclass(frozen=True)
class Envelope:
    """A parsed Crossbar response envelope."""

    data: Any
    status: str | None = None
    message: str | None = None
    error: str | None = None
    request_id: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    revision: str | None = None
    start_key: Any = None
    next_start_key: Any = None
    page_size: int | None = None
    tokens: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Envelope":
        """Build an Envelope from the decoded JSON body."""
        return cls(data=doc.get("data"), status=doc.get("status"), message=doc.get("message"),
                   error=doc.get("error"), request_id=doc.get("request_id"), auth_token=doc.get("auth_token"),
                   revision=doc.get("revision"), start_key=doc.get("start_key"),
                   next_start_key=doc.get("next_start_key"), page_size=doc.get("page_size"),
                   tokens=doc.get("tokens"))


class _LocalBuckets:
    """In-process token buckets with RateLimiter's interface, for clients built without Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float, float]] = {}  # key -> (tokens, ts, penalty_until)

    def acquire(self, key: str, capacity: float, per_second: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens and return 0, or return the seconds until they will be there."""
        now = time.monotonic()
        with self._lock:
            tokens, ts, penalty_until = self._state.get(key, (capacity, now, 0.0))
            if now < penalty_until:
                return penalty_until - now
            tokens = min(capacity, tokens + (now - ts) * per_second)
            if tokens >= cost:
                self._state[key] = (tokens - cost, now, 0.0)
                return 0.0
            self._state[key] = (tokens, now, 0.0)
            return (cost - tokens) / per_second

    def penalise(self, key: str, seconds: float) -> None:
        """Empty the bucket and hold it shut for ``seconds``."""
        until = time.monotonic() + seconds
        with self._lock:
            self._state[key] = (0.0, until, until)


_LOCAL_BUCKETS = _LocalBuckets()


def _plain(text: str) -> str:
    return text


class _RedisTokenCache:
    """The account's token in Redis, shared by every worker, plus the lock that serialises refreshes.

    The token is a bearer credential for the whole Kazoo account: it is stored sealed (``seal`` /
    ``unseal``, encryption the service provides), so reading Redis does not hand it out. A value that
    no longer unseals (keys rotated) counts as absent.
    """

    def __init__(self, redis, key: str, lock_seconds: float, *, seal: Callable[[str], str] = _plain,
                 unseal: Callable[[str], str | None] = _plain) -> None:
        self._redis = redis
        self._key = key
        self._lock_key = key + ":lock"
        self._lock_ms = int(lock_seconds * 1000)
        self._seal = seal
        self._unseal = unseal
        self._delete_if_equals = redis.register_script(_DELETE_IF_EQUALS)

    def _stored(self) -> tuple[str | None, str | None]:
        """(the raw stored value, the token it unseals to), each None when absent or unreadable."""
        value = self._redis.get(self._key)
        raw = value.decode() if isinstance(value, bytes) else value
        return raw, (self._unseal(raw) if raw else None)

    def get(self) -> str | None:
        """The cached token, or None when absent or past its refresh time."""
        return self._stored()[1]

    def put(self, token: str, ttl: float) -> None:
        """Cache ``token`` for ``ttl`` seconds."""
        self._redis.set(self._key, self._seal(token), px=max(1, int(ttl * 1000)))

    def forget(self, token: str) -> None:
        """Drop ``token`` if it is still the cached one."""
        raw, current = self._stored()
        if raw and current in (token, None):
            # Sealing is not deterministic: compare-and-delete the stored form we just read.
            self._delete_if_equals(keys=[self._key], args=[raw])

    def try_lock(self) -> str | None:
        """Take the refresh lock without waiting; return its owner id, or None when someone holds it."""
        owner = uuid.uuid4().hex
        return owner if self._redis.set(self._lock_key, owner, nx=True, px=self._lock_ms) else None

    def unlock(self, owner: str) -> None:
        """Release the refresh lock if we still own it."""
        self._delete_if_equals(keys=[self._lock_key], args=[owner])


class _LocalTokenCache:
    """The same contract as _RedisTokenCache, for one process (redis=None)."""

    _registry: dict[str, "_LocalTokenCache"] = {}
    _registry_lock = threading.Lock()

    def __init__(self) -> None:
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    @classmethod
    def for_key(cls, key: str) -> "_LocalTokenCache":
        """The process-wide cache for ``key``, so every client of one account shares a token."""
        with cls._registry_lock:
            return cls._registry.setdefault(key, cls())

    def get(self) -> str | None:
        """The cached token, or None when absent or past its refresh time."""
        return self._token if self._token and time.monotonic() < self._expires else None

    def put(self, token: str, ttl: float) -> None:
        """Cache ``token`` for ``ttl`` seconds."""
        self._token, self._expires = token, time.monotonic() + ttl

    def forget(self, token: str) -> None:
        """Drop ``token`` if it is still the cached one."""
        if self._token == token:
            self._token = None

    def try_lock(self) -> str | None:
        """Take the refresh lock without waiting."""
        return "local" if self._lock.acquire(blocking=False) else None

    def unlock(self, owner: str) -> None:
        """Release the refresh lock."""
        self._lock.release()


def token_lifetime(token: str, *, now: float | None = None) -> float:
    """Seconds until ``token`` expires: the JWT ``exp`` claim (read, not verified), else Kazoo's 3600 s."""
    parts = token.split(".")
    if len(parts) == 3:
        try:
            payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            exp = float(payload["exp"])
        except (ValueError, KeyError, TypeError):
            return DEFAULT_TOKEN_LIFETIME
        return exp - (time.time() if now is None else now)
    return DEFAULT_TOKEN_LIFETIME


def merge_patch(doc: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Kazoo PATCH semantics applied locally: merge recursively, keys set to None are removed."""
    merged = dict(doc)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = value
    return merged


def _segment(value: str) -> str:
    if not isinstance(value, str) or value in ("", ".", ".."):
        raise ValueError(f"invalid VirtualPBX id segment: {value!r}")
    return quote(value, safe="")


def _gregorian_range(created_from: datetime, created_to: datetime) -> tuple[int, int]:
    for moment in (created_from, created_to):
        if moment.tzinfo is None:
            raise ValueError("CDR range bounds must be timezone-aware datetimes")
    if created_to < created_from:
        raise ValueError("created_to is before created_from")
    if created_to - created_from > CDR_MAX_RANGE:
        raise ValueError(f"CDR range is longer than {CDR_MAX_RANGE.days} days; split it")
    return datetime_to_gregorian(created_from), datetime_to_gregorian(created_to)


@dataclass
class AudioStream:
    """A voicemail recording being read from VirtualPBX: headers known, body read chunk by chunk."""

    response: requests.Response
    content_type: str
    filename: str | None
    length: int | None  # the declared Content-Length, when VirtualPBX sent one
    max_bytes: int
    too_large: Exception

    def chunks(self, size: int = 64 * 1024) -> Iterator[bytes]:
        """The body in chunks of at most ``size`` bytes; raises ``too_large`` once more than max_bytes arrived."""
        received = 0
        for chunk in self.response.iter_content(size):
            received += len(chunk)
            if received > self.max_bytes:
                raise self.too_large
            yield chunk

    def close(self) -> None:
        """Release the connection (unread body included)."""
        self.response.close()

    def __enter__(self) -> "AudioStream":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


class VirtualPBXClient:
    """Client for one VirtualPBX account: ``client.list_vmboxes()``, ``client.send_sms(...)``, ..."""

    def __init__(self, base_url: str, *, account_id: str, api_key: str | None = None,
                 username: str | None = None, password: str | None = None, account_name: str | None = None,
                 redis=None, namespace: str = "pbxrelay", timeout: float | tuple[float, float] = 10.0,
                 session: requests.Session | None = None, tunnel_verbs: bool = False, owner: str | None = None,
                 seal: Callable[[str], str] = _plain, unseal: Callable[[str], str | None] = _plain) -> None:
        if not api_key and not (username and password and account_name):
            raise ValueError("give api_key, or username + password + account_name")
        _segment(account_id)
        owner = owner or account_id
        self.base_url = base_url.rstrip("/")
        self.account_id = account_id
        self._api_key = api_key
        self._username = username
        self._password = password
        self._account_name = account_name
        self.timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self.session = session or requests.Session()
        self.tunnel_verbs = tunnel_verbs
        # ``owner`` is OUR account the connection belongs to. Caches and buckets are keyed by it, so a
        # connection naming another account's Kazoo id never shares that account's token or bucket.
        # The bucket mirrors Kazoo's (per Kazoo account); the token is also keyed by the credential and
        # the URL it was issued by, so one given for one key is never served to a different key.
        self.bucket_key = f"virtualpbx:{owner}:{account_id}"
        credential = hashlib.sha256("\0".join((self.base_url, account_id, api_key or "", username or "",
                                                password or "", account_name or "")).encode()).hexdigest()[:32]
        cache_key = self.token_cache_key = f"{namespace}:virtualpbx:token:{owner}:{credential}"
        # The lock must outlive one auth call (connect + read timeouts + pacing) or a second worker
        # would start a parallel re-auth.
        lock_seconds = sum(self.timeout) + MAX_PACING_SLEEP + 1
        if redis is None:
            self._limiter: Any = _LOCAL_BUCKETS
            self._tokens: Any = _LocalTokenCache.for_key(cache_key)
        else:
            self._limiter = RateLimiter(redis, namespace=namespace)
            self._tokens = _RedisTokenCache(redis, cache_key, lock_seconds, seal=seal, unseal=unseal)
        self._lock_wait = lock_seconds
        # The token of the latest call, only so error text can be scrubbed of it.
        self._last_token: str | None = None

    # ----------------------------------------------------------------------------------- plumbing

    def _secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self._api_key, self._password, self._last_token) if s)

    def account_path(self, *segments: str) -> str:
        """``/v2/accounts/{account_id}/seg/...`` with every segment quoted; rejects empty, '.', '..'."""
        return "/".join(["/v2/accounts", _segment(self.account_id), *(_segment(s) for s in segments)])

    def _pace(self, cost: int) -> None:
        deadline = time.monotonic() + MAX_PACING_SLEEP
        while True:
            wait = self._limiter.acquire(self.bucket_key, BUCKET_CAPACITY, BUCKET_REFILL_PER_SECOND, cost)
            if wait <= 0:
                return
            if time.monotonic() + wait > deadline:
                raise E.RateLimited(f"VirtualPBX bucket {self.bucket_key} needs {wait:.2f}s for {cost} tokens",
                                    retry_after=wait, code="paced")
            time.sleep(wait)

    def _send(self, method: str, path: str, *, params: dict[str, Any] | None, payload: Any,
              token: str | None, accept: str | None, stream: bool, cost: int) -> requests.Response:
        """One HTTP exchange: pacing, tunnelling, timeouts, request id, transport errors, logging."""
        self._pace(cost)
        params = dict(params or {})
        envelope = None if payload is _NO_DATA else {"data": payload}
        if self.tunnel_verbs and method in _TUNNELLED_VERBS:
            envelope = {"data": {} if envelope is None else envelope["data"], "verb": method}
            params["verb"] = method
            method = "POST"
        sent_id = uuid.uuid4().hex
        headers = {"X-Request-ID": sent_id, "Accept": accept or "application/json"}
        if token:
            headers["X-Auth-Token"] = token
            self._last_token = token
        started = time.monotonic()
        try:
            response = self.session.request(method, self.base_url + path, params=params or None, json=envelope,
                                            headers=headers, timeout=self.timeout, stream=stream)
        except requests.Timeout as exc:
            raise E.RequestTimeout(scrub(f"VirtualPBX {method} {path} timed out: {exc}", self._secrets()),
                                   code="timeout") from None
        except requests.RequestException as exc:
            raise E.TransportError(scrub(f"VirtualPBX {method} {path} failed: {exc}", self._secrets()),
                                   code="transport") from None
        log.debug("VirtualPBX %s %s -> %s in %.0f ms (x-request-id %s, response request id %s)", method, path,
                  response.status_code, (time.monotonic() - started) * 1000, sent_id,
                  response.headers.get("x-request-id"))
        return response

    def _raise_for(self, response: requests.Response) -> None:
        """Turn an error answer into the matching error class (reads the small error body)."""
        try:
            doc = response.json()
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        retry_after = None
        if response.status_code == 429:
            retry_after = retry_after_seconds(response.headers) or DEFAULT_429_RETRY_AFTER
            # Kazoo's bucket is empty: stop every worker of this account for a moment, not just us.
            self._limiter.penalise(self.bucket_key, retry_after)
        raise E.error_for_status(response.status_code, kazoo_message=doc.get("message"), data=doc.get("data"),
                                 request_id=doc.get("request_id") or response.headers.get("x-request-id"),
                                 secrets=self._secrets(), retry_after=retry_after)

    def _call(self, method: str, path: str, *, params: dict[str, Any] | None = None, data: Any = _NO_DATA,
              accept: str | None = None, stream: bool = False) -> requests.Response:
        """An authenticated call; on 401 re-authenticate once and retry once; raise on any error status."""
        token = self._token()
        response = self._send(method, path, params=params, payload=data, token=token, accept=accept,
                              stream=stream, cost=CALL_COST)
        if response.status_code == 401:
            response.close()
            self._tokens.forget(token)
            token = self._refresh_token(stale=token)
            response = self._send(method, path, params=params, payload=data, token=token, accept=accept,
                                  stream=stream, cost=CALL_COST)
        if response.status_code >= 400:
            self._raise_for(response)
        return response

    def _envelope(self, response: requests.Response) -> Envelope:
        """Parse a success answer's body into an Envelope, or MalformedResponse."""
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            kind = response.headers.get("Content-Type", "unknown")
            raise E.MalformedResponse(f"VirtualPBX answered HTTP {response.status_code} with a non-JSON body "
                                      f"({kind}); is the base URL right?", status=response.status_code,
                                      code="malformed", request_id=response.headers.get("x-request-id"))
        return Envelope.from_json(doc)

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, data: Any = _NO_DATA,
                accept: str | None = None) -> Envelope | str:
        """Call ``path`` (from :meth:`account_path`); an Envelope, or text when ``accept`` is text/csv."""
        response = self._call(method, path, params=params, data=data, accept=accept)
        if accept == "text/csv":
            return response.text
        return self._envelope(response)

    def _data(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._envelope(self._call(method, path, **kwargs)).data

    # ------------------------------------------------------------------------------------- tokens

    def _token(self) -> str:
        return self._tokens.get() or self._refresh_token(stale=None)

    def _refresh_token(self, *, stale: str | None) -> str:
        """Get a token other than ``stale``: take another worker's fresh one, or authenticate under the lock."""
        deadline = time.monotonic() + self._lock_wait
        while True:
            current = self._tokens.get()
            if current and current != stale:
                return current
            owner = self._tokens.try_lock()
            if owner:
                try:
                    current = self._tokens.get()
                    if current and current != stale:
                        return current
                    token = self._authenticate()
                    lifetime = token_lifetime(token)
                    # Refresh ahead of expiry (5 min on Kazoo's 1 h tokens) so in-flight calls never
                    # carry a token that dies on the way.
                    self._tokens.put(token, max(1.0, lifetime - min(MAX_REFRESH_MARGIN, lifetime / 10)))
                    return token
                finally:
                    self._tokens.unlock(owner)
            if time.monotonic() > deadline:
                raise E.TransportError("timed out waiting for another worker to re-authenticate with VirtualPBX",
                                       code="auth_lock")
            time.sleep(0.05)

    def _authenticate(self) -> str:
        """PUT /v2/api_auth or /v2/user_auth and return the new token."""
        if self._api_key:
            path, body = "/v2/api_auth", {"api_key": self._api_key}
        else:
            assert self._username and self._password
            digest = hashlib.md5(f"{self._username.lower()}:{self._password}".encode()).hexdigest()
            path, body = "/v2/user_auth", {"credentials": digest, "account_name": self._account_name,
                                           "method": "md5"}
        response = self._send("PUT", path, params=None, payload=body, token=None, accept=None, stream=False,
                              cost=AUTH_COST)
        if response.status_code in (401, 404):
            # 404 bad_identifier is how Kazoo says "no such API key": for us both mean bad credentials.
            try:
                self._raise_for(response)
            except E.VirtualPBXError as exc:
                raise E.Unauthorized(f"VirtualPBX rejected the credentials: {exc}", status=exc.status,
                                     code=exc.code, request_id=exc.request_id, data=exc.data) from None
        if response.status_code >= 400:
            self._raise_for(response)
        envelope = self._envelope(response)
        if not envelope.auth_token:
            raise E.MalformedResponse("VirtualPBX auth answer carries no auth_token", status=response.status_code,
                                      request_id=envelope.request_id)
        return envelope.auth_token

    # --------------------------------------------------------------------------------- pagination

    def iter_pages(self, path: str, params: dict[str, Any] | None = None, page_size: int = 50
                   ) -> Iterator[Envelope]:
        """Yield each page of a listing, following ``next_start_key`` verbatim with a constant page size."""
        params = dict(params or {}, page_size=page_size)
        while True:
            envelope = self._envelope(self._call("GET", path, params=params))
            yield envelope
            if envelope.next_start_key in (None, ""):
                return
            params["start_key"] = envelope.next_start_key

    def iter_items(self, path: str, params: dict[str, Any] | None = None, page_size: int = 50
                   ) -> Iterator[dict[str, Any]]:
        """Yield every row of a paginated listing."""
        for envelope in self.iter_pages(path, params, page_size):
            if not isinstance(envelope.data, list):
                raise E.MalformedResponse(f"VirtualPBX listing {path} returned {type(envelope.data).__name__}, "
                                          "not a list", request_id=envelope.request_id)
            yield from envelope.data

    def update(self, path: str, patch: dict[str, Any], *, allow_full_replace: bool = False) -> dict[str, Any]:
        """PATCH ``path``; on 405 and only if allowed, GET the document and POST it back merged."""
        try:
            return self._data("PATCH", path, data=patch)
        except E.MethodNotAllowed:
            if not allow_full_replace:
                raise
        current = self._data("GET", path)
        return self._data("POST", path, data=merge_patch(current, patch))

    # ---------------------------------------------------------------------------------- endpoints

    def list_vmboxes(self) -> list[dict[str, Any]]:
        """GET /vmboxes: every voicemail box (id, name, mailbox, owner_id, messages)."""
        return list(self.iter_items(self.account_path("vmboxes")))

    def get_vmbox(self, box_id: str) -> dict[str, Any]:
        """GET /vmboxes/{box_id}: one box's settings."""
        return self._data("GET", self.account_path("vmboxes", box_id))

    def list_vmbox_messages(self, box_id: str) -> list[dict[str, Any]]:
        """GET /vmboxes/{box_id}/messages: message metadata, newest first."""
        return list(self.iter_items(self.account_path("vmboxes", box_id, "messages")))

    def get_vmbox_message(self, box_id: str, msg_id: str) -> dict[str, Any]:
        """GET /vmboxes/{box_id}/messages/{msg_id}: one message's metadata and transcription."""
        return self._data("GET", self.account_path("vmboxes", box_id, "messages", msg_id))

    def download_vmbox_message(self, box_id: str, msg_id: str, *, max_bytes: int
                               ) -> tuple[bytes, str, str | None]:
        """GET .../messages/{msg_id}/raw: (audio bytes, content type, filename); MediaTooLarge past max_bytes."""
        with self.open_vmbox_message(box_id, msg_id, max_bytes=max_bytes) as audio:
            return b"".join(audio.chunks()), audio.content_type, audio.filename

    def open_vmbox_message(self, box_id: str, msg_id: str, *, max_bytes: int) -> "AudioStream":
        """GET .../messages/{msg_id}/raw, unread: an AudioStream whose chunks stop with MediaTooLarge past max_bytes.

        Close it (it is a context manager) to release the connection; memory stays at one chunk.
        """
        path = self.account_path("vmboxes", box_id, "messages", msg_id, "raw")
        response = self._call("GET", path, accept="audio/*", stream=True)
        too_large = E.MediaTooLarge(f"voicemail {msg_id} is larger than {max_bytes} bytes", status=200,
                                    code="too_large", request_id=response.headers.get("x-request-id"))
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            response.close()
            raise too_large
        content_type = response.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip()
        disposition = Message()
        disposition["Content-Disposition"] = response.headers.get("Content-Disposition", "")
        return AudioStream(response=response, content_type=content_type, filename=disposition.get_filename(),
                           length=int(declared) if declared and declared.isdigit() else None,
                           max_bytes=max_bytes, too_large=too_large)

    def list_cdrs(self, created_from: datetime, created_to: datetime, *, page_size: int = 50
                  ) -> Iterator[dict[str, Any]]:
        """GET /cdrs for [created_from, created_to] (at most 31 days), one row per call leg."""
        start, end = _gregorian_range(created_from, created_to)
        return self.iter_items(self.account_path("cdrs"), {"created_from": start, "created_to": end}, page_size)

    def get_cdr(self, cdr_id: str) -> dict[str, Any]:
        """GET /cdrs/{cdr_id}: the full CDR document of one leg."""
        return self._data("GET", self.account_path("cdrs", cdr_id))

    def get_cdr_legs(self, interaction_id: str) -> list[dict[str, Any]]:
        """GET /cdrs/legs/{interaction_id}: every leg of one call."""
        return list(self.iter_items(self.account_path("cdrs", "legs", interaction_id)))

    def export_cdrs_csv(self, created_from: datetime, created_to: datetime, *, file_name: str | None = None) -> str:
        """GET /cdrs with Accept: text/csv for [created_from, created_to]: the CSV text."""
        start, end = _gregorian_range(created_from, created_to)
        params: dict[str, Any] = {"created_from": start, "created_to": end}
        if file_name:
            params["file_name"] = file_name
        return self._call("GET", self.account_path("cdrs"), params=params, accept="text/csv").text

    def get_account(self) -> dict[str, Any]:
        """GET /v2/accounts/{account_id}: the account document (name, realm, timezone)."""
        return self._data("GET", self.account_path())

    def get_user(self, user_id: str) -> dict[str, Any]:
        """GET /users/{user_id}: one user."""
        return self._data("GET", self.account_path("users", user_id))

    def list_users(self) -> list[dict[str, Any]]:
        """GET /users: every user of the account."""
        return list(self.iter_items(self.account_path("users")))

    def get_device(self, device_id: str) -> dict[str, Any]:
        """GET /devices/{device_id}: one device."""
        return self._data("GET", self.account_path("devices", device_id))

    def list_devices(self) -> list[dict[str, Any]]:
        """GET /devices: every device of the account."""
        return list(self.iter_items(self.account_path("devices")))

    def list_webhooks(self) -> list[dict[str, Any]]:
        """GET /webhooks: rows with id, hook, name, uri, enabled and disable_reason when disabled."""
        return list(self.iter_items(self.account_path("webhooks")))

    def get_webhook(self, hook_id: str) -> dict[str, Any]:
        """GET /webhooks/{hook_id}: one webhook document."""
        return self._data("GET", self.account_path("webhooks", hook_id))

    def create_webhook(self, doc: dict[str, Any]) -> dict[str, Any]:
        """PUT /webhooks: register a webhook; ValidationError lists missing/invalid fields."""
        return self._data("PUT", self.account_path("webhooks"), data=doc)

    def update_webhook(self, hook_id: str, patch: dict[str, Any], *, allow_full_replace: bool = False
                       ) -> dict[str, Any]:
        """PATCH /webhooks/{hook_id} (None removes a key); optional GET+POST fallback on 405."""
        return self.update(self.account_path("webhooks", hook_id), patch, allow_full_replace=allow_full_replace)

    def delete_webhook(self, hook_id: str) -> dict[str, Any]:
        """DELETE /webhooks/{hook_id}."""
        return self._data("DELETE", self.account_path("webhooks", hook_id))

    def list_webhook_attempts(self, hook_id: str | None = None) -> list[dict[str, Any]]:
        """GET /webhooks/attempts or /webhooks/{hook_id}/attempts: the delivery log."""
        segments = ("webhooks", hook_id, "attempts") if hook_id else ("webhooks", "attempts")
        return list(self.iter_items(self.account_path(*segments)))

    def reenable_webhooks(self) -> Any:
        """PATCH /webhooks {"re-enable": true}: re-enable every auto-disabled hook of the account."""
        return self._data("PATCH", self.account_path("webhooks"), data={"re-enable": True})

    def send_sms(self, to: str, body: str, from_: str | None = None) -> dict[str, Any]:
        """PUT /sms: queue a text message (200 means accepted, not delivered); returns message_id etc."""
        doc = {"to": to, "body": body}
        if from_:
            doc["from"] = from_
        return self._data("PUT", self.account_path("sms"), data=doc)

