"""Keep an account's Kazoo webhooks matching what its rules need (reference §4.2-4.5).

pbxrelay owns exactly the hooks whose name starts with ``"pbxrelay: "``; every other hook on the
account belongs to someone else and is never read beyond the listing, changed or deleted. A hook's
name is its identity (``"pbxrelay: channel_destroy"``, ``"pbxrelay: notifications voicemail_new"``),
so :func:`connect_account` can be run any number of times: it converges, and a second run changes
nothing.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any

from integrations.virtualpbx import errors as E
from integrations.virtualpbx.client import VirtualPBXClient
from service.events import CALL_EVENT_TYPES
from service.pbx.payloads import CHANNEL_HOOKS
from service.rules import KNOWN_EVENT_TYPES, RulesFile

log = logging.getLogger(__name__)

NAME_PREFIX = "pbxrelay: "
HOOK_RETRIES = 3  # schema allows 0-4; transport errors only, 2 s apart (§4.1)


@dataclass(frozen=True)
class HookSpec:
    """One webhook pbxrelay needs: the Kazoo hook, its modifiers and (channel hooks) the loopback filter."""

    hook: str
    custom_data: tuple[tuple[str, str], ...] = ()
    include_internal_legs: bool | None = None

    @property
    def name(self) -> str:
        """The hook's name on the account, which is how pbxrelay recognises it."""
        return NAME_PREFIX + " ".join([self.hook, *(value for _, value in self.custom_data)])

    def settings(self, uri: str, body_format: str | None) -> dict[str, Any]:
        """The webhook document fields pbxrelay sets (``body_format`` None leaves ``format`` out)."""
        doc: dict[str, Any] = {"name": self.name, "hook": self.hook, "uri": uri, "http_verb": "post",
                               "retries": HOOK_RETRIES, "include_subaccounts": False,
                               "custom_data": dict(self.custom_data)}
        if self.include_internal_legs is not None:
            doc["include_internal_legs"] = self.include_internal_legs
        if body_format is not None:
            doc["format"] = body_format
        return doc


# Loopback legs duplicate real ones and the correlator ignores them, so channel hooks never ask for them.
_CHANNEL_SPECS = tuple(HookSpec(hook, include_internal_legs=False) for hook in CHANNEL_HOOKS)
_VOICEMAIL_NEW = HookSpec("notifications", (("type", "voicemail_new"),))
_ALL_NOTIFICATIONS = HookSpec("notifications", (("type", "all"),))
_HOOKS_FOR_EVENT: dict[str, tuple[HookSpec, ...]] = {
    # A call answered only by voicemail is summarised from the voicemail_new notification too.
    **{event_type: (*_CHANNEL_SPECS, _VOICEMAIL_NEW) for event_type in CALL_EVENT_TYPES
       if event_type.startswith("call.")},
    "voicemail.new": (_VOICEMAIL_NEW,),
    "crm.event": (),
    **{f"virtualpbx.{spec.hook}": (spec,) for spec in _CHANNEL_SPECS},
    "virtualpbx.notifications": (_ALL_NOTIFICATIONS,),
    "virtualpbx.object": (HookSpec("object", (("type", "all"), ("action", "all"))),),
    "virtualpbx.parking": (HookSpec("parking"),),
    "virtualpbx.sms": (HookSpec("sms"),),
}


def required_hooks(rules_file: RulesFile) -> list[HookSpec]:
    """The webhooks the file's enabled rules need, deduplicated, in a stable order."""
    event_types = {known for rule in rules_file.rules if rule.enabled for pattern in rule.on
                   for known in KNOWN_EVENT_TYPES if fnmatch.fnmatchcase(known, pattern)}
    needed: dict[HookSpec, None] = {}
    for event_type in KNOWN_EVENT_TYPES:  # KNOWN_EVENT_TYPES order keeps the result stable
        if event_type in event_types:
            needed.update(dict.fromkeys(_HOOKS_FOR_EVENT[event_type]))
    if _ALL_NOTIFICATIONS in needed:
        # "all" already delivers voicemail_new; a second hook would send every voicemail twice.
        needed.pop(_VOICEMAIL_NEW, None)
    if any(step.action == "send_sms" for rule in rules_file.rules if rule.enabled for step in rule.do):
        needed[HookSpec("sms")] = None  # STOP replies must reach the opt-out list of an account that texts
    return list(needed)


@dataclass(frozen=True)
class HookResult:
    """What happened to one pbxrelay hook; ``changed`` names the fields an update set."""

    name: str
    hook_id: str
    changed: tuple[str, ...] = ()
    disable_reason: str | None = None


@dataclass
class ConnectReport:
    """The outcome of :func:`connect_account`; ``body_format`` is how Kazoo now sends to us."""

    created: list[HookResult] = field(default_factory=list)
    updated: list[HookResult] = field(default_factory=list)
    unchanged: list[HookResult] = field(default_factory=list)
    deleted: list[HookResult] = field(default_factory=list)
    reenabled: list[HookResult] = field(default_factory=list)
    body_format: str = "json"
    format_rejected: bool = False

    @property
    def changed_anything(self) -> bool:
        """Whether the run wrote to the account at all."""
        return bool(self.created or self.updated or self.deleted or self.reenabled)


def _format_rejected(exc: E.ValidationError) -> bool:
    return "format" in exc.fields


class _Connector:
    """One connect_account run; remembers across hooks whether the cluster took ``format``."""

    def __init__(self, client: VirtualPBXClient, hook_url: str, prefer_json: bool) -> None:
        self.client = client
        self.hook_url = hook_url
        self.report = ConnectReport(body_format="json" if prefer_json else "form-data")

    @property
    def wanted_format(self) -> str | None:
        # None sends no `format` at all: Kazoo's default is form-data, and older clusters reject the key.
        return "json" if self.report.body_format == "json" else None

    def note_rejection(self) -> None:
        log.warning("VirtualPBX account %s rejects the webhook `format` field (Kazoo < 4.3); "
                    "hooks will deliver form-data", self.client.account_id)
        self.report.body_format = "form-data"
        self.report.format_rejected = True

    def create(self, spec: HookSpec) -> None:
        doc = {**spec.settings(self.hook_url, self.wanted_format), "enabled": True}
        try:
            stored = self.client.create_webhook(doc)
        except E.ValidationError as exc:
            if "format" not in doc or not _format_rejected(exc):
                raise
            self.note_rejection()
            doc.pop("format")
            stored = self.client.create_webhook(doc)
        self.report.created.append(HookResult(spec.name, stored["id"]))

    def differences(self, spec: HookSpec, current: dict[str, Any]) -> dict[str, Any]:
        """The PATCH that makes ``current`` match ``spec`` ({} when it already does)."""
        patch = {key: value for key, value in spec.settings(self.hook_url, self.wanted_format).items()
                 if key != "custom_data" and current.get(key) != value}
        if self.wanted_format is None and current.get("format") not in (None, "form-data"):
            patch["format"] = None  # drop a stale "json" Kazoo would otherwise keep using
        wanted_custom = dict(spec.custom_data)
        current_custom = current.get("custom_data") or {}
        if current_custom != wanted_custom:
            # PATCH merges objects, so keys we no longer want must be removed explicitly.
            patch["custom_data"] = {**{key: None for key in current_custom}, **wanted_custom}
        return patch

    def reconcile(self, spec: HookSpec, hook_id: str) -> None:
        current = self.client.get_webhook(hook_id)
        patch = self.differences(spec, current)
        disabled = current.get("enabled") is False
        if disabled:
            patch["enabled"] = True
        if patch:
            try:
                self.client.update_webhook(hook_id, patch, allow_full_replace=True)
            except E.ValidationError as exc:
                if "format" not in patch or not _format_rejected(exc):
                    raise
                self.note_rejection()
                patch = self.differences(spec, current)
                if disabled:
                    patch["enabled"] = True
                if patch:
                    self.client.update_webhook(hook_id, patch, allow_full_replace=True)
        changed = tuple(sorted(key for key in patch if key != "enabled"))
        result = HookResult(spec.name, hook_id, changed, current.get("disable_reason"))
        (self.report.updated if changed else self.report.unchanged).append(result)
        if disabled:
            self.report.reenabled.append(result)


def connect_account(client: VirtualPBXClient, *, hook_url: str, hooks: list[HookSpec],
                    prefer_json: bool = True) -> ConnectReport:
    """Create, update, re-enable and delete pbxrelay's webhooks so the account has exactly ``hooks``."""
    connector = _Connector(client, hook_url, prefer_json)
    wanted = {spec.name: spec for spec in hooks}
    ours = sorted((row for row in client.list_webhooks() if str(row.get("name", "")).startswith(NAME_PREFIX)),
                  key=lambda row: row["id"])
    kept: dict[str, str] = {}
    for row in ours:
        if row["name"] in wanted and row["name"] not in kept:
            kept[row["name"]] = row["id"]
        else:
            # No longer needed, or a second copy left by an interrupted run: either would double deliveries.
            client.delete_webhook(row["id"])
            connector.report.deleted.append(HookResult(row["name"], row["id"]))
    for name, spec in wanted.items():
        if name in kept:
            connector.reconcile(spec, kept[name])
        else:
            connector.create(spec)
    return connector.report


@dataclass(frozen=True)
class ReenabledHook:
    """A pbxrelay hook that was switched back on, and why Kazoo had switched it off."""

    hook_id: str
    name: str
    hook: str
    disable_reason: str | None


def reenable_disabled(client: VirtualPBXClient, *, receiver_healthy: bool) -> list[ReenabledHook]:
    """Re-enable pbxrelay's disabled hooks, but only while our receiver is healthy; others' hooks are left alone."""
    if not receiver_healthy:
        # Kazoo disabled them because deliveries failed; enabling now would only fail and disable again.
        return []
    reenabled = []
    for row in client.list_webhooks():
        if not str(row.get("name", "")).startswith(NAME_PREFIX):
            continue
        if row.get("enabled") is False or row.get("disable_reason"):
            client.update_webhook(row["id"], {"enabled": True}, allow_full_replace=True)
            reenabled.append(ReenabledHook(row["id"], row["name"], row.get("hook", ""), row.get("disable_reason")))
    return reenabled
