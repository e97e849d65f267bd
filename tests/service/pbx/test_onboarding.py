"""service.pbx.onboarding against the VirtualPBX standin over real HTTP: required hooks, connect, re-enable."""

from __future__ import annotations

import pytest
import yaml
from flask import Flask, request
from pydantic import SecretStr

from integrations.base import ConfigModel, Integration, ParamsModel
from integrations.virtualpbx.client import VirtualPBXClient
from service.pbx.onboarding import HookSpec, ReenabledHook, connect_account, reenable_disabled, required_hooks
from service.rules.schema import load_rules
from service.sandbox.standins.base import serve_in_thread
from service.sandbox.virtualpbx.sender import DISABLE_REASON, WebhookSender
from service.sandbox.virtualpbx.standin import create_app
from service.sandbox.virtualpbx.state import StandinOptions, StandinState

CHANNEL_NAMES = ["pbxrelay: channel_create", "pbxrelay: channel_answer", "pbxrelay: channel_bridge",
                 "pbxrelay: channel_destroy"]
VOICEMAIL_NEW = "pbxrelay: notifications voicemail_new"


class ChatConfig(ConfigModel):
    """The fake integration's config."""

    token: SecretStr


class NotifyParams(ParamsModel):
    """The fake integration's one action."""

    text: str


class Chat(Integration):
    """A fake integration, so rules files load without a real one."""

    key = "chat"
    name = "Chat"
    Config = ChatConfig
    actions = {"notify": NotifyParams}


def rules_with(*rules: tuple[str | list[str], bool]) -> list[HookSpec]:
    """required_hooks of a valid rules file whose rules listen to the given ``on`` values (enabled flag)."""
    document = {
        "account": {"id": "91eb05e5c68d7ca05e7618b6821d2d16", "name": "Acme", "timezone": "America/New_York"},
        "connections": {"team": {"integration": "chat", "token": "env:ACME_TOKEN"}},
        "rules": [{"name": f"r{i}", "on": on, "enabled": enabled,
                   "do": [{"use": "team", "action": "notify", "with": {"text": "hi"}}]}
                  for i, (on, enabled) in enumerate(rules)],
    }
    return required_hooks(load_rules(yaml.safe_dump(document), filename="acme.yaml", registry={"chat": Chat}))


@pytest.mark.parametrize("rules, names", [
    ([("call.missed", True)], [*CHANNEL_NAMES, VOICEMAIL_NEW]),
    ([("voicemail.new", True)], [VOICEMAIL_NEW]),
    ([("crm.event", True)], []),
    ([("call.*", True), ("voicemail.new", True), (["call.ended", "call.started"], True)],
     [*CHANNEL_NAMES, VOICEMAIL_NEW]),
    ([("virtualpbx.*", False), ("voicemail.new", True)], [VOICEMAIL_NEW]),
    ([("virtualpbx.channel_destroy", True), ("virtualpbx.notifications", True)],
     ["pbxrelay: channel_destroy", "pbxrelay: notifications all"]),
    # notifications "all" already carries voicemail_new, so no second notifications hook.
    ([("virtualpbx.*", True), ("voicemail.new", True)],
     [*CHANNEL_NAMES, VOICEMAIL_NEW.replace("voicemail_new", "all"), "pbxrelay: parking", "pbxrelay: object all all",
      "pbxrelay: sms"]),
])
def test_required_hooks(rules, names):
    assert [spec.name for spec in rules_with(*rules)] == names


def test_required_hook_settings():
    specs = {spec.name: spec for spec in rules_with(("virtualpbx.*", True), ("call.ended", True))}
    assert all(specs[name].include_internal_legs is False for name in CHANNEL_NAMES)
    assert specs["pbxrelay: object all all"].custom_data == (("type", "all"), ("action", "all"))
    assert specs["pbxrelay: notifications all"].settings("https://x.test/h", "json") == {
        "name": "pbxrelay: notifications all", "hook": "notifications", "uri": "https://x.test/h", "http_verb": "post",
        "retries": 3, "include_subaccounts": False, "custom_data": {"type": "all"}, "format": "json"}


@pytest.fixture
def standin_options() -> StandinOptions:
    """Kazoo's defaults; tests override fields."""
    return StandinOptions()


@pytest.fixture
def pbx(standin_options):
    """An standin with one account, served on a real socket: (state, account, url)."""
    state = StandinState(standin_options)
    account = state.add_account(name="Acme Dental")
    server = serve_in_thread(create_app(state))
    yield state, account, server.url
    server.stop()


@pytest.fixture
def client(pbx, redis_client, namespace) -> VirtualPBXClient:
    """A client of the emulated account, its token cached in the test's Redis namespace."""
    _, account, url = pbx
    return VirtualPBXClient(url, account_id=account.id, api_key=account.api_key, redis=redis_client,
                            namespace=namespace, timeout=5.0)


class Receiver:
    """A webhook receiver on a real socket answering ``status``; records content types."""

    def __init__(self) -> None:
        self.status = 200
        self.content_types: list[str | None] = []
        app = Flask("onboarding_receiver")

        @app.post("/hooks/kazoo/secret")
        def hook():
            self.content_types.append(request.content_type)
            return "ok", self.status

        self.server = serve_in_thread(app)
        self.url = self.server.url + "/hooks/kazoo/secret"


@pytest.fixture
def receiver():
    """A running receiver."""
    recv = Receiver()
    yield recv
    recv.server.stop()


CALL_HOOKS = [HookSpec(h, include_internal_legs=False) for h in
              ("channel_create", "channel_answer", "channel_bridge", "channel_destroy")] + [
    HookSpec("notifications", (("type", "voicemail_new"),))]
URL = "https://relay.example.test/hooks/kazoo/tok1"


def hooks_by_name(state, account) -> dict[str, dict]:
    """The account's stored webhook documents by name."""
    return {hook["name"]: hook for hook in state.accounts[account.id].webhooks.values()}


def writes(state) -> list[tuple[str, str]]:
    """Every webhook write the standin received (method, path)."""
    return [(r["method"], r["path"]) for r in state.requests
            if "/webhooks" in r["path"] and r["method"] in ("PUT", "POST", "PATCH", "DELETE")]


def test_connect_creates_then_second_run_changes_nothing(pbx, client):
    state, account, _ = pbx
    first = connect_account(client, hook_url=URL, hooks=CALL_HOOKS)
    assert sorted(r.name for r in first.created) == sorted([*CHANNEL_NAMES, VOICEMAIL_NEW])
    assert (first.body_format, first.format_rejected) == ("json", False)
    stored = hooks_by_name(state, account)
    assert {r.hook_id for r in first.created} == {h["id"] for h in stored.values()}
    vm = stored[VOICEMAIL_NEW]
    assert (vm["hook"], vm["uri"], vm["http_verb"], vm["format"], vm["retries"], vm["enabled"], vm["custom_data"]) == (
        "notifications", URL, "post", "json", 3, True, {"type": "voicemail_new"})
    assert all(stored[name]["include_internal_legs"] is False for name in CHANNEL_NAMES)

    writes_before = len(writes(state))
    second = connect_account(client, hook_url=URL, hooks=CALL_HOOKS)
    assert sorted(r.name for r in second.unchanged) == sorted(stored)
    assert not second.changed_anything and second.body_format == "json"
    assert len(writes(state)) == writes_before


def test_changed_url_updates_stale_hooks_go_and_other_hooks_stay(pbx, client):
    state, account, _ = pbx
    theirs = state.add_webhook(account.id, {"name": "CRM call log", "hook": "channel_destroy",
                                            "uri": "https://crm.example.test/kazoo"})
    theirs_before = dict(theirs)
    connect_account(client, hook_url=URL, hooks=CALL_HOOKS)
    new_url = "https://relay.example.test/hooks/kazoo/tok2"
    report = connect_account(client, hook_url=new_url, hooks=[HookSpec("notifications", (("type", "voicemail_new"),))])
    vm_id = hooks_by_name(state, account)[VOICEMAIL_NEW]["id"]
    assert [(r.name, r.hook_id, r.changed) for r in report.updated] == [(VOICEMAIL_NEW, vm_id, ("uri",))]
    assert sorted(r.name for r in report.deleted) == sorted(CHANNEL_NAMES)
    assert not report.created and not report.unchanged
    assert set(hooks_by_name(state, account)) == {"CRM call log", VOICEMAIL_NEW}
    assert hooks_by_name(state, account)[VOICEMAIL_NEW]["uri"] == new_url
    assert state.accounts[account.id].webhooks[theirs["id"]] == theirs_before


def test_drifted_settings_are_repaired_with_full_replace_when_patch_is_refused(pbx, client):
    state, account, _ = pbx
    connect_account(client, hook_url=URL, hooks=CALL_HOOKS)
    vm = hooks_by_name(state, account)[VOICEMAIL_NEW]
    destroy = hooks_by_name(state, account)["pbxrelay: channel_destroy"]
    # Someone edited our hooks in the portal.
    vm.update(retries=1, custom_data={"type": "voicemail_new", "added_by_hand": "x"})
    destroy["include_internal_legs"] = True
    state.add_fault(405, message="invalid_method", data={"message": "invalid method"},
                    path_contains=f"/webhooks/{vm['id']}", method="PATCH")
    report = connect_account(client, hook_url=URL, hooks=CALL_HOOKS)
    assert sorted((r.name, r.changed) for r in report.updated) == [
        ("pbxrelay: channel_destroy", ("include_internal_legs",)), (VOICEMAIL_NEW, ("custom_data", "retries"))]
    stored = hooks_by_name(state, account)
    assert (stored[VOICEMAIL_NEW]["retries"], stored[VOICEMAIL_NEW]["custom_data"]) == (3, {"type": "voicemail_new"})
    assert stored["pbxrelay: channel_destroy"]["include_internal_legs"] is False
    assert ("POST", f"/accounts/{account.id}/webhooks/{vm['id']}") in writes(state)
    assert connect_account(client, hook_url=URL, hooks=CALL_HOOKS).changed_anything is False


def test_duplicate_pbxrelay_hook_is_deleted(pbx, client):
    state, account, _ = pbx
    spec = CALL_HOOKS[3]
    first = state.add_webhook(account.id, {**spec.settings(URL, "json"), "id": "a" * 32})
    second = state.add_webhook(account.id, {**spec.settings(URL, "json"), "id": "b" * 32})
    report = connect_account(client, hook_url=URL, hooks=[spec])
    assert [r.hook_id for r in report.unchanged] == [first["id"]]
    assert [r.hook_id for r in report.deleted] == [second["id"]]
    assert list(state.accounts[account.id].webhooks) == [first["id"]]


@pytest.mark.parametrize("standin_options", [StandinOptions(webhook_format=False)])
def test_cluster_without_format_gets_form_data_hooks(pbx, client, receiver):
    state, account, _ = pbx
    report = connect_account(client, hook_url=receiver.url, hooks=CALL_HOOKS)
    assert (report.body_format, report.format_rejected, len(report.created)) == ("form-data", True, 5)
    assert all("format" not in hook for hook in hooks_by_name(state, account).values())
    again = connect_account(client, hook_url=receiver.url, hooks=CALL_HOOKS)
    assert (again.body_format, again.format_rejected, len(again.unchanged), again.changed_anything) == (
        "form-data", True, 5, False)
    WebhookSender(state).dispatch(account.id, "channel_destroy", {"hook_event": "channel_destroy", "call_id": "c1"})
    assert receiver.content_types == ["application/x-www-form-urlencoded"]


def test_prefer_form_data_sends_no_format(pbx, client):
    state, account, _ = pbx
    report = connect_account(client, hook_url=URL, hooks=CALL_HOOKS[:1], prefer_json=False)
    assert (report.body_format, report.format_rejected) == ("form-data", False)
    assert hooks_by_name(state, account)["pbxrelay: channel_create"]["format"] == "form-data"
    switched = connect_account(client, hook_url=URL, hooks=CALL_HOOKS[:1])
    assert [r.changed for r in switched.updated] == [("format",)]
    assert hooks_by_name(state, account)["pbxrelay: channel_create"]["format"] == "json"


def test_auto_disabled_hook_is_reenabled_only_when_receiver_is_healthy(pbx, client, receiver):
    state, account, _ = pbx
    theirs = state.add_webhook(account.id, {"name": "CRM call log", "hook": "channel_destroy",
                                            "uri": "https://crm.example.test/kazoo"})
    theirs.update(enabled=False, disable_reason=DISABLE_REASON)
    connect_account(client, hook_url=receiver.url, hooks=CALL_HOOKS)
    ours = hooks_by_name(state, account)["pbxrelay: channel_destroy"]
    receiver.status = 503
    sender = WebhookSender(state)
    for n in range(7):  # Kazoo disables after more than 6 failures within 60 s
        sender.dispatch(account.id, "channel_destroy", {"hook_event": "channel_destroy", "call_id": f"c{n}"})
    assert (ours["enabled"], ours.get("disable_reason")) == (False, DISABLE_REASON)

    assert reenable_disabled(client, receiver_healthy=False) == []
    assert ours["enabled"] is False

    receiver.status = 200
    assert reenable_disabled(client, receiver_healthy=True) == [
        ReenabledHook(ours["id"], "pbxrelay: channel_destroy", "channel_destroy", DISABLE_REASON)]
    ours = state.accounts[account.id].webhooks[ours["id"]]
    assert (ours["enabled"], ours.get("disable_reason")) == (True, None)
    assert (theirs["enabled"], theirs["disable_reason"]) == (False, DISABLE_REASON)
    assert reenable_disabled(client, receiver_healthy=True) == []
    results = sender.dispatch(account.id, "channel_destroy", {"hook_event": "channel_destroy", "call_id": "c8"})
    assert [r.success for r in results if r.hook_id == ours["id"]] == [True]


def test_connect_reenables_a_disabled_matching_hook(pbx, client):
    state, account, _ = pbx
    connect_account(client, hook_url=URL, hooks=CALL_HOOKS)
    hook = hooks_by_name(state, account)[VOICEMAIL_NEW]
    hook.update(enabled=False, disable_reason=DISABLE_REASON)
    report = connect_account(client, hook_url=URL, hooks=CALL_HOOKS)
    assert [(r.name, r.disable_reason) for r in report.reenabled] == [(VOICEMAIL_NEW, DISABLE_REASON)]
    assert VOICEMAIL_NEW in {r.name for r in report.unchanged} and not report.updated
    assert hooks_by_name(state, account)[VOICEMAIL_NEW]["enabled"] is True
