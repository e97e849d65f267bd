"""The standin's webhook sender, with Kazoo's delivery semantics (reference §4.1-4.2).

* ``http_verb`` get: the payload flattened into the query string (``uri + "?" + qs``); post/put:
  ``format`` "form-data" (default, bracket-nested ``key[sub]=v`` / ``key[]=v``) or "json".
* ``custom_data`` merged over the payload (4.3 behaviour: modifiers ``type``/``action`` too),
  ``cluster_id`` added, headers ``X-Hook-ID`` and ``X-Account-ID``; no signature.
* Success is HTTP 200 only (201 too when the verb is PUT); anything else is a failure, not retried.
* Retries only on transport errors (refused, reset, timeout), ``retry_interval`` apart, ``retries``
  attempts in all (clamped 1-5).
* Every failure counts; more than ``attempt_failure_count`` (6) failures within
  ``attempt_failure_expiry_s`` (60 s) disable the hook with disable_reason "too many failed attempts".
  Kazoo's disabler runs every 15 s; this one decides right after each failure.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import requests

from .state import StandinState

DISABLE_REASON = "too many failed attempts"
_KEY_SAFE = "_-.~"


def encode_kazoo_form(payload: dict[str, Any]) -> str:
    """Kazoo's ``kz_http_util:json_to_querystring``: ``a=1&obj[k]=v&list[]=x``, values form-encoded.

    Where Kazoo is undefined or ambiguous we choose, on purpose: None values and empty objects/lists
    are left out (Kazoo strips undefined values before encoding and would emit stray "&" for empty
    ones); keys are percent-encoded, brackets included, so a key that contains "[", "&" or "=" cannot
    be mistaken for structure (Kazoo writes keys raw, which is identical for ordinary snake_case keys);
    objects or lists inside lists raise TypeError, as Kazoo's encoder cannot express them either.
    """
    parts: list[str] = []
    for key, value in payload.items():
        _encode_value(quote(str(key), safe=_KEY_SAFE), value, parts)
    return "&".join(parts)


def _encode_value(name: str, value: Any, parts: list[str]) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        for key, inner in value.items():
            _encode_value(f"{name}[{quote(str(key), safe=_KEY_SAFE)}]", inner, parts)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (dict, list, tuple)):
                raise TypeError(f"cannot form-encode a nested container inside list {name!r}")
            if item is not None:
                parts.append(f"{name}[]={_scalar(item)}")
    else:
        parts.append(f"{name}={_scalar(value)}")


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return quote_plus(str(value), safe="")


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of delivering one event to one hook."""

    hook_id: str
    success: bool
    attempts: int
    status: int | None = None
    error: str | None = None


class WebhookSender:
    """Delivers events to the webhooks registered in an :class:`StandinState`, as Kazoo would."""

    def __init__(self, state: StandinState, *, retry_interval: float = 2.0, connect_timeout: float = 10.0,
                 read_timeout: float = 10.0, session: requests.Session | None = None) -> None:
        self.state = state
        self.retry_interval = retry_interval
        # Kazoo passes only connect_timeout_ms (10 s) to its HTTP client; we also cap the read so a
        # stuck receiver cannot hang the standin forever.
        self.timeout = (connect_timeout, read_timeout)
        self.session = session or requests.Session()

    def matching_hooks(self, account_id: str, hook_type: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """The enabled hooks of the account that this event fires, after modifier and leg filtering."""
        with self.state.lock:
            hooks = list(self.state.accounts[account_id].webhooks.values())
        return [hook for hook in hooks if hook.get("enabled", True) and _fires(hook, hook_type, payload)]

    def dispatch(self, account_id: str, hook_type: str, payload: dict[str, Any]) -> list[DeliveryResult]:
        """Send one event (``hook_type`` e.g. "channel_create", "notifications") to every matching hook."""
        return [self.deliver(account_id, hook, payload) for hook in self.matching_hooks(account_id, hook_type, payload)]

    def deliver(self, account_id: str, hook: dict[str, Any], payload: dict[str, Any]) -> DeliveryResult:
        """Deliver to one hook with Kazoo's retry, success and failure-counting rules."""
        body = {**payload, "cluster_id": self.state.options.cluster_id, **(hook.get("custom_data") or {})}
        verb = str(hook.get("http_verb", "post")).lower()
        attempts = min(5, max(1, int(hook.get("retries", 2))))
        headers = {"X-Hook-ID": hook["id"], "X-Account-ID": account_id, "User-Agent": "kazoo-webhooks (standin)"}
        url, data = hook["uri"], None
        if verb == "get":
            url = f"{hook['uri']}?{encode_kazoo_form(body)}"
        elif hook.get("format") == "json":
            data = json.dumps(body, indent=2).encode()
            headers["Content-Type"] = "application/json"
        else:
            data = encode_kazoo_form(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        attempt = 1
        while True:
            retries_left = attempts - attempt
            try:
                response = self.session.request(verb.upper(), url, data=data, headers=headers, timeout=self.timeout)
            except requests.RequestException as exc:
                client_error = "timeout" if isinstance(exc, requests.Timeout) else "econnrefused"
                self._record(account_id, hook, payload, {"result": "failure", "reason": "kazoo http client error",
                                                         "client_error": client_error, "retries_left": retries_left})
                if not retries_left:
                    return DeliveryResult(hook["id"], success=False, attempts=attempt, error=client_error)
                time.sleep(self.retry_interval)
                attempt += 1
                continue
            ok = response.status_code == 200 or (verb == "put" and response.status_code == 201)
            if ok:
                self._record(account_id, hook, payload, {"result": "success", "resp_status_code": response.status_code,
                                                         "retries_left": retries_left})
            else:
                self._record(account_id, hook, payload, {"result": "failure", "reason": "bad response code",
                                                         "resp_status_code": response.status_code,
                                                         "resp_body": response.text[:512],
                                                         "retries_left": retries_left})
            return DeliveryResult(hook["id"], success=ok, attempts=attempt, status=response.status_code)

    def _record(self, account_id: str, hook: dict[str, Any], payload: dict[str, Any], outcome: dict[str, Any]) -> None:
        """Log the attempt (failures always, successes if configured) and run the disabler on failures."""
        now = self.state.now()
        failed = outcome["result"] == "failure"
        with self.state.lock:
            account = self.state.accounts[account_id]
            self.state.deliveries.append({"hook_id": hook["id"], "uri": hook["uri"], "at": now,
                                          "event": payload.get("hook_event") or payload.get("event_name"),
                                          "call_id": payload.get("call_id"), **outcome})
            if failed or self.state.options.log_successful_attempts:
                account.attempts.append({"hook_id": hook["id"], "timestamp": self.state.gregorian_now(),
                                         "_seq": len(account.attempts), **outcome})
            if not failed:
                return
            window = self.state.options.attempt_failure_expiry_s
            failures = [t for t in self.state.hook_failures.get(hook["id"], []) if t > now - window] + [now]
            self.state.hook_failures[hook["id"]] = failures
            stored = account.webhooks.get(hook["id"])
            if stored is not None and len(failures) > self.state.options.attempt_failure_count:
                stored["enabled"] = False
                stored["disable_reason"] = DISABLE_REASON


def _fires(hook: dict[str, Any], hook_type: str, payload: dict[str, Any]) -> bool:
    """Kazoo's per-hook filters: hook type (or "all"), notification/object modifiers, internal legs."""
    if hook.get("hook") not in (hook_type, "all"):
        return False
    custom = hook.get("custom_data") or {}
    if hook.get("hook") == "notifications" and custom.get("type") not in ("all", payload.get("event_name")):
        return False
    if hook.get("hook") == "object":
        if custom.get("type") not in ("all", payload.get("type")):
            return False
        if custom.get("action") not in ("all", payload.get("action")):
            return False
    if hook.get("include_internal_legs") is False and payload.get("is_internal_leg"):
        return False
    return True
