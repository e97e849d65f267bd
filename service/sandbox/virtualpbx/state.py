"""The standin's in-memory world: accounts, their documents, tokens, buckets and injected faults.

Tests seed it directly (``state.add_account(...)``) or over HTTP (``POST /_standin/seed``); the
standin app, the webhook sender and the call simulator all read and write the same object, under
``state.lock``.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from integrations.virtualpbx.gregorian import GREGORIAN_UNIX_OFFSET

from .media import silent_mp3

# Hook ids a webhook doc may name (§4.5), and the modifiers Kazoo requires for some of them.
HOOK_TYPES = ("channel_create", "channel_answer", "channel_bridge", "channel_destroy", "notifications",
              "object", "parking", "sms", "all")
NOTIFICATION_TYPES = ("all", "voicemail_new", "voicemail_saved", "voicemail_full", "missed_call", "register",
                      "deregister", "inbound_fax", "inbound_fax_error", "outbound_fax", "outbound_fax_error",
                      "outbound_smtp_fax_error", "cf_notification", "webhook", "first_occurrence",
                      "low_balance", "topup", "transaction", "service_added", "new_account", "new_user",
                      "password_recovery", "customer_update", "cnam_request", "denied_emergency_bridge",
                      "account_zone_change", "bill_reminder")
OBJECT_TYPES = ("all", "account", "callflow", "device", "faxbox", "media", "user", "vmbox", "fax",
                "mailbox_message", "call_recording")
OBJECT_ACTIONS = ("all", "doc_created", "doc_edited", "doc_deleted")
WEBHOOK_DEFAULTS = {"http_verb": "post", "format": "form-data", "retries": 2, "enabled": True,
                    "include_subaccounts": False, "include_internal_legs": True, "custom_data": {}}


def new_id() -> str:
    """A Kazoo-style document id: 32 lower-case hex digits."""
    return uuid.uuid4().hex


def gregorian_now(clock: Callable[[], float]) -> int:
    """The clock's current time in Gregorian seconds."""
    return int(clock()) + GREGORIAN_UNIX_OFFSET


@dataclass
class StandinOptions:
    """Knobs of the emulated cluster; defaults are Kazoo's."""

    token_lifetime: float = 3600.0
    jwt_tokens: bool = True
    bucket_capacity: float = 100.0
    bucket_refill: float = 10.0
    auth_cost: float = 35.0
    call_cost: float = 1.0
    cdr_max_range: int = 31 * 86400 + 3600
    default_page_size: int = 50
    log_successful_attempts: bool = False
    attempt_failure_count: int = 6
    attempt_failure_expiry_s: float = 60.0
    # False emulates a cluster older than Kazoo 4.3, whose webhook schema has no `format` (form-data only).
    webhook_format: bool = True
    cluster_id: str = "e1f2c3d4a5b6c7d8e9f0a1b2c3d4e5f6"
    clock: Callable[[], float] = time.time


@dataclass
class Account:
    """One Kazoo account and everything stored under it."""

    id: str
    name: str
    realm: str
    api_key: str
    reseller_id: str
    caller_id_number: str = "+15550000000"
    status: str = "active"  # "expired" / "disabled" answer 423 locked
    sms_enabled: bool = True
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    vmboxes: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # box id -> msg id -> doc
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # msg id -> (audio, content type)
    cdrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    webhooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    sms: dict[str, dict[str, Any]] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)  # md5/sha1 hex of "user:pass" -> user id


@dataclass
class Fault:
    """A canned answer for the next ``times`` requests whose method/path match (tests and /_standin)."""

    status: int
    message: str = "unspecified_fault"
    data: Any = None
    path_contains: str = ""
    method: str | None = None
    times: int = 1
    delay: float = 0.0
    raw_body: str | None = None
    content_type: str = "text/html"
    # Extra response headers, e.g. a Retry-After that a proxy in front of Kazoo adds to a 429.
    headers: dict[str, str] = field(default_factory=dict)

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to ``method path``."""
        return (self.method in (None, method)) and self.path_contains in path


@dataclass
class TokenInfo:
    """What the cluster knows about an issued token."""

    account_id: str
    owner_id: str | None
    method: str
    expires: float


class StandinState:
    """Everything the emulated cluster holds; thread-safe through ``lock``."""

    def __init__(self, options: StandinOptions | None = None) -> None:
        self.options = options or StandinOptions()
        self.lock = threading.RLock()
        self.accounts: dict[str, Account] = {}
        self.tokens: dict[str, TokenInfo] = {}
        self.buckets: dict[str, tuple[float, float]] = {}  # "<ip>/<account>" -> (tokens, ts)
        self.faults: list[Fault] = []
        self.requests: list[dict[str, Any]] = []  # every Crossbar request: method, path, query, request id
        self.deliveries: list[dict[str, Any]] = []  # every webhook HTTP attempt the sender made
        self.hook_failures: dict[str, list[float]] = {}  # hook id -> failure times (disabler window)

    def now(self) -> float:
        """The cluster clock (Unix seconds)."""
        return self.options.clock()

    def gregorian_now(self) -> int:
        """The cluster clock in Gregorian seconds."""
        return gregorian_now(self.options.clock)

    # ------------------------------------------------------------------------------------ seeding

    def add_account(self, *, account_id: str | None = None, name: str = "Acme Dental", api_key: str | None = None,
                    realm: str | None = None, caller_id_number: str = "+15550000000") -> Account:
        """Create an account with an API key (64 hex) and a SIP realm."""
        account_id = account_id or new_id()
        account = Account(id=account_id, name=name, realm=realm or f"{account_id[:6]}.sip.virtualpbx.test",
                          api_key=api_key or hashlib.sha256(account_id.encode() + uuid.uuid4().bytes).hexdigest(),
                          reseller_id=new_id(), caller_id_number=caller_id_number)
        with self.lock:
            self.accounts[account_id] = account
        return account

    def add_user(self, account_id: str, *, first_name: str, last_name: str, extension: str,
                 username: str | None = None, password: str | None = None, user_id: str | None = None,
                 email: str | None = None) -> dict[str, Any]:
        """Create a user; with username+password it can log in through /v2/user_auth."""
        account = self.accounts[account_id]
        user_id = user_id or new_id()
        doc = {"id": user_id, "first_name": first_name, "last_name": last_name,
               "username": username or f"{first_name.lower()}@{account.realm}",
               "email": email or f"{first_name.lower()}@example.test", "presence_id": extension,
               "caller_id": {"internal": {"name": f"{first_name} {last_name}", "number": extension}},
               "priv_level": "user", "enabled": True, "timezone": "America/New_York"}
        with self.lock:
            account.users[user_id] = doc
            if password:
                plain = f"{doc['username'].lower()}:{password}".encode()
                account.credentials[hashlib.md5(plain).hexdigest()] = user_id
                account.credentials[hashlib.sha1(plain).hexdigest()] = user_id
        return doc

    def add_device(self, account_id: str, *, owner_id: str, name: str, device_id: str | None = None,
                   device_type: str = "sip_device") -> dict[str, Any]:
        """Create a SIP device owned by a user."""
        account = self.accounts[account_id]
        device_id = device_id or new_id()
        doc = {"id": device_id, "name": name, "owner_id": owner_id, "device_type": device_type, "enabled": True,
               "sip": {"username": f"user_{device_id[:8]}", "realm": account.realm, "method": "password"}}
        with self.lock:
            account.devices[device_id] = doc
        return doc

    def add_vmbox(self, account_id: str, *, owner_id: str | None, mailbox: str, name: str,
                  box_id: str | None = None, timezone_name: str = "UTC", transcribe: bool = False
                  ) -> dict[str, Any]:
        """Create a voicemail box."""
        account = self.accounts[account_id]
        box_id = box_id or new_id()
        doc = {"id": box_id, "name": name, "mailbox": mailbox, "owner_id": owner_id, "timezone": timezone_name,
               "transcribe": transcribe, "media_extension": "mp3", "delete_after_notify": False,
               "save_after_notify": False, "notify_email_addresses": []}
        with self.lock:
            account.vmboxes[box_id] = doc
            account.messages.setdefault(box_id, {})
        return doc

    def add_message(self, account_id: str, box_id: str, *, caller_id_number: str, caller_id_name: str,
                    call_id: str, length_ms: int, timestamp: int | None = None, audio: bytes | None = None,
                    content_type: str = "audio/mpeg", transcription: str | None = None,
                    msg_id: str | None = None) -> dict[str, Any]:
        """Store a voicemail message and its audio (a silent MP3 of ``length_ms`` when none is given)."""
        account = self.accounts[account_id]
        box = account.vmboxes[box_id]
        timestamp = timestamp if timestamp is not None else self.gregorian_now()
        when = datetime.fromtimestamp(timestamp - GREGORIAN_UNIX_OFFSET, tz=timezone.utc)
        msg_id = msg_id or f"{when:%Y%m}-{new_id()}"
        doc: dict[str, Any] = {"media_id": msg_id, "call_id": call_id, "caller_id_number": caller_id_number,
                               "caller_id_name": caller_id_name[:35], "from": f"{caller_id_number}@{account.realm}",
                               "to": f"{box['mailbox']}@{account.realm}", "folder": "new", "length": length_ms,
                               "timestamp": timestamp}
        if transcription is not None:
            doc["transcription"] = {"result": "success", "text": transcription}
        with self.lock:
            account.messages.setdefault(box_id, {})[msg_id] = doc
            account.media[msg_id] = (audio if audio is not None else silent_mp3(length_ms), content_type)
        return doc

    def add_cdr(self, account_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Store a full CDR document (needs id, call_id, timestamp)."""
        with self.lock:
            self.accounts[account_id].cdrs[doc["id"]] = doc
        return doc

    def add_webhook(self, account_id: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Register a webhook as PUT /webhooks would; ValueError with Kazoo's details when invalid."""
        problems = webhook_errors(doc)
        if problems:
            raise ValueError(problems)
        stored = normalise_webhook(doc, hook_id=doc.get("id") or new_id())
        with self.lock:
            self.accounts[account_id].webhooks[stored["id"]] = stored
        return stored

    def add_fault(self, status: int, **kwargs: Any) -> Fault:
        """Answer the next matching request(s) with ``status`` (see :class:`Fault` for the options)."""
        fault = Fault(status=status, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The first fault matching this request, consuming one of its uses."""
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def expire_tokens(self) -> int:
        """Make every issued token expired now (the next call with one answers 401); returns how many."""
        with self.lock:
            for info in self.tokens.values():
                info.expires = self.now() - 1
            return len(self.tokens)

    def seed(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Load accounts (with users, devices, vmboxes, messages, webhooks) from a JSON document."""
        for spec in doc.get("accounts", []):
            account = self.add_account(account_id=spec.get("id"), name=spec.get("name", "Acme Dental"),
                                       api_key=spec.get("api_key"), realm=spec.get("realm"))
            for user in spec.get("users", []):
                self.add_user(account.id, first_name=user["first_name"], last_name=user["last_name"],
                              extension=user["extension"], username=user.get("username"),
                              password=user.get("password"), user_id=user.get("id"))
            for device in spec.get("devices", []):
                self.add_device(account.id, owner_id=device["owner_id"], name=device["name"],
                                device_id=device.get("id"))
            for box in spec.get("vmboxes", []):
                stored = self.add_vmbox(account.id, owner_id=box.get("owner_id"), mailbox=box["mailbox"],
                                        name=box["name"], box_id=box.get("id"))
                for message in box.get("messages", []):
                    self.add_message(account.id, stored["id"], **message)
            for hook in spec.get("webhooks", []):
                self.add_webhook(account.id, hook)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        """Counts per account and the webhooks' state, for GET /_standin/state."""
        with self.lock:
            return {
                "accounts": {
                    account.id: {
                        "name": account.name, "users": len(account.users), "devices": len(account.devices),
                        "vmboxes": len(account.vmboxes),
                        "messages": sum(len(m) for m in account.messages.values()), "cdrs": len(account.cdrs),
                        "sms": len(account.sms),
                        "webhooks": [{"id": h["id"], "hook": h["hook"], "uri": h["uri"], "enabled": h["enabled"],
                                      "disable_reason": h.get("disable_reason")} for h in account.webhooks.values()],
                    } for account in self.accounts.values()},
                "tokens": len(self.tokens), "requests": len(self.requests), "deliveries": len(self.deliveries),
                "pending_faults": len(self.faults),
            }

    def requests_to(self, path_suffix: str, method: str | None = None) -> list[dict[str, Any]]:
        """Logged Crossbar requests whose path ends with ``path_suffix`` (and method, if given)."""
        with self.lock:
            return [r for r in self.requests
                    if r["path"].endswith(path_suffix) and method in (None, r["method"])]


def _required(message: str = "Field is required but missing", **extra: Any) -> dict[str, Any]:
    return {"required": {"message": message, **extra}}


def webhook_errors(doc: dict[str, Any]) -> dict[str, Any]:
    """Kazoo-style validation errors for a webhook document ({} when valid)."""
    errors: dict[str, Any] = {}
    for name in ("name", "uri", "hook"):
        if doc.get(name) in (None, ""):
            errors[name] = _required(value=name)
        elif not isinstance(doc[name], str):
            errors[name] = {"type": {"message": "Value did not match type(s): string", "value": doc[name]}}
    uri = doc.get("uri")
    if isinstance(uri, str) and uri and not uri.startswith(("http://", "https://")):
        errors["uri"] = {"format": {"message": "Value is not a valid uri", "value": uri}}
    hook = doc.get("hook")
    if isinstance(hook, str) and hook and hook not in HOOK_TYPES:
        errors["hook"] = {"enum": {"message": "Value not found in enumerated list of values", "value": hook,
                                   "target": list(HOOK_TYPES)}}
    _check_enum(errors, doc, "http_verb", ("get", "post", "put"))
    _check_enum(errors, doc, "format", ("form-data", "json"))
    retries = doc.get("retries")
    if retries is not None:
        if isinstance(retries, bool) or not isinstance(retries, int):
            errors["retries"] = {"type": {"message": "Value did not match type(s): integer", "value": retries}}
        elif retries < 0:
            errors["retries"] = {"minimum": {"message": "Value must be at least 0", "value": retries}}
        elif retries > 4:
            errors["retries"] = {"maximum": {"message": "Value must be at most 4", "value": retries}}
    for flag in ("enabled", "include_subaccounts", "include_internal_legs"):
        if doc.get(flag) is not None and not isinstance(doc[flag], bool):
            errors[flag] = {"type": {"message": "Value did not match type(s): boolean", "value": doc[flag]}}
    custom = doc.get("custom_data") or {}
    if not isinstance(custom, dict) or any(not isinstance(v, str) for v in custom.values()):
        errors["custom_data"] = {"type": {"message": "custom_data values must be strings"}}
        return errors
    modifiers = {"notifications": {"type": NOTIFICATION_TYPES},
                 "object": {"type": OBJECT_TYPES, "action": OBJECT_ACTIONS}}.get(
                     hook if isinstance(hook, str) else "", {})
    for modifier, allowed in modifiers.items():
        key = f"custom_data.{modifier}"
        if modifier not in custom:
            errors[key] = _required("missing required modifier")
        elif custom[modifier] not in allowed:
            errors[key] = {"enum": {"message": "Value not found in enumerated list of values",
                                    "value": custom[modifier], "target": list(allowed)}}
    return errors


def _check_enum(errors: dict[str, Any], doc: dict[str, Any], key: str, allowed: tuple[str, ...]) -> None:
    if doc.get(key) is not None and doc[key] not in allowed:
        errors[key] = {"enum": {"message": "Value not found in enumerated list of values", "value": doc[key],
                                "target": list(allowed)}}


def normalise_webhook(doc: dict[str, Any], *, hook_id: str) -> dict[str, Any]:
    """A stored webhook: the schema's defaults filled in, our id set."""
    stored = {**WEBHOOK_DEFAULTS, **{k: v for k, v in doc.items() if k != "disable_reason"}, "id": hook_id}
    stored["custom_data"] = dict(stored.get("custom_data") or {})
    return stored
