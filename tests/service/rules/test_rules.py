"""Tests for service.rules: loading and validating rules files, conditions, planning, rendering, connections."""

from __future__ import annotations

import copy
import pickle
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from integrations.base import ConfigModel, Integration, ParamsModel, PermanentError
from service.events import Event
from service.rules import (
    KNOWN_EVENT_TYPES,
    AccountSpec,
    ConnectionSpec,
    PlannedAction,
    Rule,
    RulesError,
    RulesProblem,
    load_rules,
    matches,
    plan,
    redact_connection,
    render_action,
    validate_connection,
)
from service.rules.schema import MAX_RULES_BYTES

FIXTURES = Path(__file__).parents[2] / "fixtures" / "rules"
ACCOUNT_ID = "91eb05e5c68d7ca05e7618b6821d2d16"


class FakeConfig(ConfigModel):
    """A connection config with one required secret, one optional secret and one plain setting."""

    token: SecretStr
    signing_secret: SecretStr | None = None
    workspace: str = "default"


class NotifyParams(ParamsModel):
    """Params of the fake notify action."""

    channel: str
    text: str
    blocks: list | None = None


class FakeIntegration(Integration):
    """The smallest integration: one config, one action."""

    key = "fake"
    name = "Fake"
    Config = FakeConfig
    actions = {"notify": NotifyParams}


REGISTRY = {"fake": FakeIntegration}


def base_document() -> dict:
    """A small valid rules document, to mutate into broken ones."""
    return {
        "account": {"id": ACCOUNT_ID, "name": "Acme", "timezone": "America/New_York",
                    "business_hours": {"mon-fri": "08:30-17:30"}},
        "connections": {"chat": {"integration": "fake", "token": "env:ACME_TOKEN"}},
        "rules": [{"name": "r1", "on": "call.missed",
                   "do": [{"use": "chat", "action": "notify", "with": {"channel": "#c", "text": "hi"}}]}],
    }


def load_document(document: dict, filename: str = "acme.yaml"):
    """Dump a document to YAML and load it the way the service does."""
    return load_rules(yaml.safe_dump(document, sort_keys=False), filename=filename, registry=REGISTRY)


def make_event(data: dict | None = None, *, type: str = "call.missed",
               at: datetime = datetime(2024, 3, 11, 14, 0, tzinfo=timezone.utc)) -> Event:
    """An event for the test account."""
    return Event(type=type, account_id=ACCOUNT_ID, key="k1", occurred_at=at, data=data or {})


ACCOUNT = AccountSpec(id=ACCOUNT_ID, name="Acme", timezone="America/New_York",
                      business_hours={"mon-fri": "08:30-17:30", "sat": ["09:00-12:00", "13:00-15:00"]})


def rule_with(conditions: dict | None, on: str | list[str] = "call.missed") -> Rule:
    """A rule with the given `if:` and `on:`."""
    return Rule.model_validate({"name": "r", "on": on, "if": conditions,
                                "do": [{"use": "chat", "action": "notify", "with": {}}]})


# --- Loading -----------------------------------------------------------------------------------


def test_fixture_file_loads():
    """The documented example file loads, with YAML 1.2 scalars: `on:` is a key, `+1*` a string."""
    rules_file = load_rules((FIXTURES / "acme.yaml").read_text(), filename="acme.yaml", registry=REGISTRY)
    assert [rule.name for rule in rules_file.rules] == ["missed calls to the front desk", "every raw hook",
                                                        "long calls"]
    first = rules_file.rules[0]
    assert first.on == ["call.missed"]
    assert first.if_ == {"direction": "inbound", "caller.number": "+1*"}
    assert rules_file.rules[1].enabled is False
    assert rules_file.account.business_hours == {"mon-fri": ["08:30-17:30"], "sat": ["09:00-12:00"]}
    assert rules_file.connections["team-chat"].settings == {"token": "env:ACME_FAKE_TOKEN", "workspace": "acme"}


SCALAR_PROBE = """\
account: {id: 91eb05e5c68d7ca05e7618b6821d2d16, name: Acme, timezone: America/New_York}
connections: {chat: {integration: fake, token: t}}
rules:
  - name: probe
    on: call.missed
    if: {probe: %s}
    do: [{use: chat, action: notify, with: {channel: c, text: t}}]
"""


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("on", "on"), ("off", "off"), ("yes", "yes"), ("NO", "NO"), ("+15551234567", "+15551234567"),
    ("0201234567", "0201234567"), ("2024-03-11", "2024-03-11"), ("12:30", "12:30"), ("true", True),
    ("42", 42), ("-1.5", -1.5), ("~", None),
], ids=lambda value: str(value))
def test_yaml_scalars_follow_yaml_1_2(yaml_text, expected):
    """Plain scalars that YAML 1.1 would turn into booleans, octals, dates or sexagesimals stay strings."""
    rules_file = load_rules(SCALAR_PROBE % yaml_text, filename="acme.yaml", registry=REGISTRY)
    assert rules_file.rules[0].on == ["call.missed"]
    assert rules_file.rules[0].if_ == {"probe": expected}


DELETE = object()


def _set(path: str, value):
    """A mutation that sets a dotted path (list indexes as numbers) in the document."""
    def mutate(document):
        """Set (or delete) the value at the path."""
        *parents, last = path.split(".")
        target = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if value is DELETE:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return mutate


WITH = "rules.0.do.0.with"

ERROR_CASES = [
    # (id, mutation, rule, field, message fragment)
    ("unknown-top-level-key", _set("extras", 1), None, "extras",
     "unknown key (expected one of: account, crm, connections, rules)"),
    ("unknown-connection", _set("rules.0.do.0.use", "nope"), "r1", "do[0].use",
     "unknown connection 'nope' (defined: chat)"),
    ("unknown-integration", _set("connections.chat.integration", "slack"), None, "connections.chat.integration",
     "unknown integration 'slack' (available: fake)"),
    ("unknown-action", _set("rules.0.do.0.action", "post"), "r1", "do[0].action", "unknown action 'post' for fake"),
    ("unknown-param", _set(f"{WITH}.chanel", "#c"), "r1", "do[0].with.chanel",
     "unknown parameter (notify takes channel, text, blocks)"),
    ("missing-required-param", _set(f"{WITH}.text", DELETE), "r1", "do[0].with.text", "missing required parameter"),
    ("bad-template", _set(f"{WITH}.text", "{{ caller.name }"), "r1", "do[0].with.text", "syntax error on line 1"),
    ("bad-nested-template", _set(f"{WITH}.blocks", [{"text": "{% if %}"}]), "r1", "do[0].with.blocks[0].text",
     "syntax error"),
    ("bad-timezone", _set("account.timezone", "Mars/Olympus"), None, "account.timezone", "unknown time zone"),
    ("bad-account-id", _set("account.id", "acme"), None, "account.id", "32 hexadecimal characters"),
    ("bad-region", _set("account.region", "XX"), None, "account.region", "unknown phone region"),
    ("bad-business-days", _set("account.business_hours", {"mon-fry": "09:00-17:00"}), None,
     "account.business_hours.mon-fry", "not a day or day range"),
    ("bad-business-range", _set("account.business_hours", {"mon-fri": "9-5"}), None,
     "account.business_hours.mon-fri[0]", "not a HH:MM-HH:MM range"),
    ("bad-business-time", _set("account.business_hours", {"mon": "09:00-24:30"}), None,
     "account.business_hours.mon[0]", "not a time of day"),
    ("overnight-business-hours", _set("account.business_hours", {"sat": ["22:00-06:00"]}), None,
     "account.business_hours.sat[0]", "ends before it starts"),
    ("unknown-alert-connection", _set("account.alert_connection", "pager"), None, "account.alert_connection",
     "unknown connection 'pager'"),
    ("duplicate-rule-names", lambda d: d["rules"].append(copy.deepcopy(d["rules"][0])), "r1", "name",
     "duplicate rule name (rules[0] has it too)"),
    ("unknown-event-type", _set("rules.0.on", "call.mised"), "r1", "on[0]", "unknown event type 'call.mised'"),
    ("glob-matching-nothing", _set("rules.0.on", ["call.missed", "sms.*"]), "r1", "on[1]",
     "'sms.*' matches no known event type"),
    ("on-wrong-type", _set("rules.0.on", 5), "r1", "on", "valid list"),
    ("unknown-rule-key", _set("rules.0.iff", {}), "r1", "iff",
     "unknown key (expected one of: name, on, if, do, enabled)"),
    ("unknown-action-key", _set("rules.0.do.0.params", {}), "r1", "do[0].params",
     "unknown key (expected one of: use, action, with)"),
    ("empty-do", _set("rules.0.do", []), "r1", "do", "at least 1 item"),
    ("enabled-not-bool", _set("rules.0.enabled", "maybe"), "r1", "enabled", "valid boolean"),
    ("rule-without-name", _set("rules.0.name", DELETE), None, "rules[0].name", "required key is missing"),
    ("unknown-operator", _set("rules.0.if", {"duration": {"gte_": 3}}), "r1", "if.duration.gte_", "unknown operator"),
    ("numeric-op-on-string", _set("rules.0.if", {"duration": {"gt": "long"}}), "r1", "if.duration.gt",
     "needs a number"),
    ("empty-operator-map", _set("rules.0.if", {"duration": {}}), "r1", "if.duration", "empty operator mapping"),
    ("nested-list-value", _set("rules.0.if", {"tags": [["a"]]}), "r1", "if.tags", "non-empty list of values"),
    ("bad-field-path", _set("rules.0.if", {"caller..number": "x"}), "r1", "if.caller..number", "not a field path"),
    ("business-hours-not-bool", _set("rules.0.if", {"business_hours": "yes"}), "r1", "if.business_hours",
     "needs true or false"),
    ("business-hours-without-hours", lambda d: (d["account"].pop("business_hours"),
                                                d["rules"][0].update({"if": {"business_hours": True}})),
     "r1", "if.business_hours", "account.business_hours is not set"),
    ("unknown-connection-key", _set("connections.chat.tokn", "x"), None, "connections.chat.tokn",
     "unknown key (fake takes api_url, token, signing_secret, workspace)"),
    ("missing-connection-key", _set("connections.chat.token", DELETE), None, "connections.chat.token",
     "required key is missing"),
    ("bad-env-reference", _set("connections.chat.token", "env:1-X"), None, "connections.chat.token",
     "is not env:VARIABLE_NAME"),
    ("bad-connection-name", _set("connections", {"bad name": {"integration": "fake", "token": "t"}}), None,
     "connections.bad name", "not a connection name"),
]


@pytest.mark.parametrize(("mutation", "rule", "field", "fragment"), [case[1:] for case in ERROR_CASES],
                         ids=[case[0] for case in ERROR_CASES])
def test_rules_file_errors(mutation, rule, field, fragment):
    """Each broken file raises RulesError naming the file, the rule and the field of the problem."""
    document = base_document()
    mutation(document)
    with pytest.raises(RulesError) as caught:
        load_document(document, filename="acme.yaml")
    error = caught.value
    assert any(problem.rule == rule and problem.field == field and fragment in problem.message
               for problem in error.problems), str(error)
    prefix = f"acme.yaml: rule {rule!r}: {field}: " if rule else f"acme.yaml: {field}: "
    assert any(line.startswith(prefix) and fragment in line for line in str(error).splitlines()), str(error)


@pytest.mark.parametrize(("text", "fragment"), [
    ("account: {id: x\nrules: [", "invalid YAML at line"),
    ("account:\n  name: a\n name: b\n", "invalid YAML at line 3"),
    ("- just\n- a list\n", "must be a mapping with account, connections and rules, not a list"),
    ("just a string", "not a str"),
    ("", "not an empty file"),
    ("a: &a [*a]", "nested more than 32 levels"),
    ("a: " + "[" * 40 + "]" * 40, "nested more than 32 levels"),
    ("a: " + "[" * 20000 + "]" * 20000, "nested more than 32 levels"),
    ("a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]",
     "more than 100000 values"),
    ("a: " + "9" * 5000, "invalid YAML"),
    ("a: !!python/object/apply:os.system [echo hi]", "invalid YAML"),
    ("a: \x07", "invalid YAML"),
    ("# padding\n" * (MAX_RULES_BYTES // 10 + 1), "larger than 1024 KiB"),
    ("a: '" + "é" * (MAX_RULES_BYTES // 2 + 1) + "'", "larger than 1024 KiB"),
], ids=["malformed", "bad-indentation", "list-root", "scalar-root", "empty", "recursive-alias", "deep-nesting",
        "parser-deep-nesting",
        "alias-bomb", "huge-int", "python-tag", "control-character", "oversized", "oversized-in-bytes"])
def test_unreadable_files(text, fragment):
    """Files that are not a reasonable YAML mapping fail with the file name and the reason."""
    with pytest.raises(RulesError) as caught:
        load_rules(text, filename="acme.yaml", registry=REGISTRY)
    assert str(caught.value).startswith("acme.yaml: ")
    assert fragment in str(caught.value)


def test_all_problems_are_reported_together():
    """One RulesError carries every semantic problem of the file, one line each."""
    document = base_document()
    document["rules"][0]["do"][0]["action"] = "post"
    document["rules"][0]["on"] = "call.mised"
    document["connections"]["chat"]["tokn"] = "x"
    with pytest.raises(RulesError) as caught:
        load_document(document)
    assert {(problem.rule, problem.field) for problem in caught.value.problems} == {
        (None, "connections.chat.tokn"), ("r1", "on[0]"), ("r1", "do[0].action")}
    assert len(str(caught.value).splitlines()) == 3


def test_rules_error_pickles():
    """RulesError survives pickling with its problems, so it can cross process boundaries."""
    error = RulesError("acme.yaml", rule="r1", field="do[0].use", message="unknown connection 'x'")
    copy_ = pickle.loads(pickle.dumps(error))
    assert copy_.problems == [RulesProblem("r1", "do[0].use", "unknown connection 'x'")]
    assert str(copy_) == "acme.yaml: rule 'r1': do[0].use: unknown connection 'x'"


# --- Conditions --------------------------------------------------------------------------------

DATA = {
    "direction": "inbound",
    "caller": {"name": "Bob", "number": "15551234567"},
    "national": "5551234567",
    "duration": 42,
    "duration_text": "42",
    "hangup_cause": "NO_ANSWER",
    "internal": False,
    "internal_text": "false",
    "owner_id": None,
    "legs": [{"number": "+15551230000"}],
}

CONDITION_CASES = [
    ("eq-string", {"direction": "inbound"}, True),
    ("eq-string-ignores-case", {"direction": "INBOUND"}, True),
    ("eq-string-differs", {"direction": "outbound"}, False),
    ("eq-number", {"duration": 42}, True),
    ("eq-number-differs", {"duration": 41}, False),
    ("eq-number-vs-numeric-string", {"duration_text": 42}, True),
    ("eq-string-vs-number", {"duration": "42"}, True),
    ("eq-bool", {"internal": False}, True),
    ("eq-bool-differs", {"internal": True}, False),
    ("eq-bool-vs-string", {"internal_text": False}, True),
    ("eq-null", {"owner_id": None}, True),
    ("eq-null-vs-value", {"direction": None}, False),
    ("eq-phone-formatted", {"caller.number": "+1 (555) 123-4567"}, True),
    ("eq-phone-national-vs-e164", {"caller.number": "(555) 123-4567"}, True),
    ("eq-phone-other-number", {"caller.number": "+15551234568"}, False),
    ("eq-phone-leading-zero-kept", {"duration_text": "042"}, False),
    ("any-of", {"hangup_cause": ["USER_BUSY", "NO_ANSWER"]}, True),
    ("any-of-none", {"hangup_cause": ["USER_BUSY", "CALL_REJECTED"]}, False),
    ("any-of-with-glob", {"hangup_cause": ["USER_*", "NO_*"]}, True),
    ("glob-plus-one-vs-bare-digits", {"caller.number": "+1*"}, True),
    ("glob-digits", {"caller.number": "1555*"}, True),
    ("glob-other-country", {"caller.number": "+44*"}, False),
    ("glob-formatted-with-range", {"caller.number": "+1 (555) 12[0-4]*"}, True),
    ("glob-formatted-range-misses", {"caller.number": "+1 (555) 12[5-9]*"}, False),
    ("glob-e164-of-national", {"national": "+1555*"}, True),
    ("glob-question-mark", {"caller.name": "b?b"}, True),
    ("glob-on-mapping-never", {"caller": "*"}, False),
    ("gte", {"duration": {"gte": 42}}, True),
    ("gt", {"duration": {"gt": 42}}, False),
    ("lt", {"duration": {"lt": 60}}, True),
    ("lte", {"duration": {"lte": 41}}, False),
    ("range", {"duration": {"gte": 30, "lt": 60}}, True),
    ("range-misses", {"duration": {"gte": 30, "lt": 40}}, False),
    ("numeric-op-on-numeric-string", {"duration_text": {"gte": 30}}, True),
    ("numeric-op-on-text", {"direction": {"gt": 1}}, False),
    ("ne", {"direction": {"ne": "outbound"}}, True),
    ("ne-equal", {"direction": {"ne": "inbound"}}, False),
    ("in", {"hangup_cause": {"in": ["NO_ANSWER"]}}, True),
    ("not-in", {"hangup_cause": {"not_in": ["NO_ANSWER"]}}, False),
    ("glob-op", {"caller.name": {"glob": "B*"}}, True),
    ("eq-op", {"caller.name": {"eq": "bob"}}, True),
    ("exists-null", {"owner_id": {"exists": True}}, True),
    ("exists-false-missing", {"voicemail": {"exists": False}}, True),
    ("exists-true-missing", {"voicemail": {"exists": True}}, False),
    ("exists-false-present", {"direction": {"exists": False}}, False),
    ("missing-eq", {"voicemail": "x"}, False),
    ("missing-any-of", {"voicemail": ["x", "y"]}, False),
    ("missing-ne", {"voicemail": {"ne": "x"}}, False),
    ("missing-not-in", {"voicemail": {"not_in": ["x"]}}, False),
    ("missing-nested", {"caller.email": "x"}, False),
    ("path-through-scalar", {"direction.x": "y"}, False),
    ("list-index-path", {"legs.0.number": "+1555*"}, True),
    ("list-index-out-of-range", {"legs.1.number": "*"}, False),
    ("event-type", {"event.type": "call.missed"}, True),
    ("all-must-hold", {"direction": "inbound", "duration": {"gt": 100}}, False),
    ("no-conditions", None, True),
]


@pytest.mark.parametrize(("conditions", "expected"), [case[1:] for case in CONDITION_CASES],
                         ids=[case[0] for case in CONDITION_CASES])
def test_conditions(conditions, expected):
    """Each kind of condition matches (or not) the sample call."""
    assert matches(rule_with(conditions), make_event(DATA), ACCOUNT) is expected


BUSINESS_HOURS_CASES = [
    # America/New_York; mon-fri 08:30-17:30, sat 09:00-12:00 and 13:00-15:00
    ("fri-before-opening-est", datetime(2024, 3, 8, 13, 15), False),
    ("fri-at-opening-est", datetime(2024, 3, 8, 13, 30), True),
    ("fri-at-closing-est", datetime(2024, 3, 8, 22, 30), False),
    ("fri-before-closing-est", datetime(2024, 3, 8, 22, 29), True),
    ("mon-after-spring-forward-open", datetime(2024, 3, 11, 12, 45), True),  # 08:45 EDT; 07:45 if still EST
    ("mon-after-spring-forward-closed", datetime(2024, 3, 11, 21, 45), False),  # 17:45 EDT; 16:45 in EST
    ("fri-before-fall-back-open", datetime(2024, 11, 1, 12, 45), True),  # 08:45 EDT
    ("mon-after-fall-back-closed", datetime(2024, 11, 4, 13, 15), False),  # 08:15 EST; 09:15 if still EDT
    ("utc-tuesday-is-local-monday-night", datetime(2024, 3, 12, 1, 0), False),  # Mon 21:00 EDT
    ("sat-morning", datetime(2024, 3, 9, 14, 30), True),  # 09:30 EST
    ("sat-lunch-gap", datetime(2024, 3, 9, 17, 30), False),  # 12:30 EST
    ("sat-afternoon", datetime(2024, 3, 9, 18, 30), True),  # 13:30 EST
    ("sunday", datetime(2024, 3, 10, 16, 0), False),
]


@pytest.mark.parametrize(("moment", "open_"), [case[1:] for case in BUSINESS_HOURS_CASES],
                         ids=[case[0] for case in BUSINESS_HOURS_CASES])
def test_business_hours(moment, open_):
    """business_hours: true/false follows the account's local time, across DST changes and weekends."""
    event = make_event(DATA, at=moment.replace(tzinfo=timezone.utc))
    assert matches(rule_with({"business_hours": True}), event, ACCOUNT) is open_
    assert matches(rule_with({"business_hours": False}), event, ACCOUNT) is not open_


@pytest.mark.parametrize(("on", "event_type", "expected"), [
    ("call.missed", "call.missed", True),
    ("call.missed", "call.ended", False),
    (["call.ended", "call.missed"], "call.missed", True),
    (["call.ended", "voicemail.new"], "call.missed", False),
    ("call.*", "call.answered", True),
    ("virtualpbx.*", "virtualpbx.channel_create", True),
    ("virtualpbx.*", "call.started", False),
    ("virtualpbx.channel_[cd]*", "virtualpbx.channel_destroy", True),
], ids=["single", "single-other", "list", "list-none", "glob", "glob-hooks", "glob-other", "glob-brackets"])
def test_on(on, event_type, expected):
    """`on` takes one type, a list of types or a glob."""
    assert matches(rule_with(None, on=on), make_event(DATA, type=event_type), ACCOUNT) is expected


# --- Planning and rendering --------------------------------------------------------------------


def planning_file():
    """Rules in a known order, one disabled, with `on` as a type, a list and a glob."""
    document = base_document()
    step = {"use": "chat", "action": "notify", "with": {"channel": "#c", "text": "{{ caller.name }}"}}
    document["rules"] = [
        {"name": "first", "on": "call.missed", "do": [step, {**step, "with": {"channel": "#d", "text": "2"}}]},
        {"name": "disabled", "on": "call.missed", "enabled": False, "do": [step]},
        {"name": "outbound only", "on": "call.missed", "if": {"direction": "outbound"}, "do": [step]},
        {"name": "listed", "on": ["call.ended", "call.missed"], "do": [step]},
        {"name": "globbed", "on": "call.*", "do": [step]},
        {"name": "raw hooks", "on": "virtualpbx.*", "do": [step]},
    ]
    return load_document(document)


def test_plan_order_and_disabled_rules():
    """plan() lists enabled matching rules in file order, each rule's steps in order."""
    rules_file = planning_file()
    planned = plan(rules_file, make_event(DATA))
    assert [(action.rule_name, action.index) for action in planned] == [
        ("first", 0), ("first", 1), ("listed", 0), ("globbed", 0)]
    assert planned[0] == PlannedAction(rule_name="first", index=0, connection="chat", integration="fake",
                                       action="notify", params_template={"channel": "#c", "text": "{{ caller.name }}"})
    disabled = rules_file.rules[1]
    assert matches(disabled, make_event(DATA), rules_file.account)  # it matches; plan() skips it


def test_plan_other_event_types():
    """A raw hook only reaches rules whose `on` covers it."""
    planned = plan(planning_file(), make_event(DATA, type="virtualpbx.channel_create"))
    assert [action.rule_name for action in planned] == ["raw hooks"]


def test_plan_returns_copies():
    """Mutating a planned action's params does not change the loaded rules."""
    rules_file = planning_file()
    plan(rules_file, make_event(DATA))[0].params_template["text"] = "changed"
    assert plan(rules_file, make_event(DATA))[0].params_template["text"] == "{{ caller.name }}"


def test_render_action_fixture():
    """The fixture's actions render with phone, localtime and duration in the account's locale."""
    rules_file = load_rules((FIXTURES / "acme.yaml").read_text(), filename="acme.yaml", registry=REGISTRY)
    event = make_event({"direction": "inbound", "caller": {"name": "Bob", "number": "15551234567"},
                        "duration": 75}, at=datetime(2024, 3, 11, 12, 45, tzinfo=timezone.utc))
    rendered = [render_action(action, event, rules_file.account) for action in plan(rules_file, event)]
    assert rendered == [
        {"channel": "#front-desk", "text": "Missed call from Bob ((555) 123-4567)"},
        {"channel": "calls", "text": "Mon Mar 11, 8:45 AM EDT",
         "blocks": [{"type": "section", "text": "Bob waited 1m 15s"}]},
    ]


@pytest.mark.parametrize(("params", "path", "fragment"), [
    ({"text": "{{ caller.nmae }}"}, "do[2].with.text", "has no attribute 'nmae'"),
    ({"blocks": [{"text": "{{ ''.__class__ }}"}]}, "do[2].with.blocks[0].text", "unsafe"),
    ({"text": "{{ caller.name }"}, "do[2].with.text", "syntax error"),
], ids=["undefined", "sandbox-in-nested-param", "syntax-unchecked-at-load"])
def test_render_action_errors(params, path, fragment):
    """A template failing at render time is a PermanentError naming the rule, the param path and the cause."""
    planned = PlannedAction(rule_name="missed calls", index=2, connection="chat", integration="fake",
                            action="notify", params_template=params)
    with pytest.raises(PermanentError) as caught:
        render_action(planned, make_event(DATA), ACCOUNT)
    assert str(caught.value).startswith(f"rule 'missed calls': {path}: ")
    assert fragment in str(caught.value)


# --- Connections -------------------------------------------------------------------------------


def stored_values(connection: str, key: str):
    """A stand-in for the store: only chat.token has a stored value."""
    return {("chat", "token"): "stored-token"}.get((connection, key))


@pytest.mark.parametrize(("settings_", "expected"), [
    ({"token": "literal-token"}, {"token": "literal-token"}),
    ({"token": "env:ACME_TOKEN"}, {"token": "from-env"}),
    ({"token": "env:ACME_TOKEN", "workspace": "env:ACME_WORKSPACE"}, {"token": "from-env", "workspace": "acme"}),
    ({"token": "file:secrets/token.txt"}, {"token": "from-file"}),
    ({"token": "file:./secrets/../secrets/token.txt"}, {"token": "from-file"}),
    ({"token": "stored:"}, {"token": "stored-token"}),
], ids=["literal", "env", "env-non-secret", "file", "file-normalised", "stored"])
def test_validate_connection_resolves(tmp_path, settings_, expected):
    """env:, file: (relative to the rules directory) and stored: references resolve to their values."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token.txt").write_text("from-file\n")
    spec = ConnectionSpec(integration="fake", **settings_)
    resolved = validate_connection("chat", spec, REGISTRY, resolve=stored_values, base_dir=tmp_path,
                                   environ={"ACME_TOKEN": "from-env", "ACME_WORKSPACE": "acme"})
    assert resolved == expected


@pytest.mark.parametrize(("name", "settings_", "field", "fragment"), [
    ("chat", {"token": "env:ACME_SLACK_TOKEN"}, "connections.chat.token",
     "environment variable ACME_SLACK_TOKEN is not set"),
    ("chat", {"token": "file:missing.txt"}, "connections.chat.token", "cannot read file 'missing.txt'"),
    ("chat", {"token": "file:../outside.txt"}, "connections.chat.token", "outside the rules file's directory"),
    ("chat", {"token": "file:/etc/hostname"}, "connections.chat.token", "outside the rules file's directory"),
    ("other", {"token": "stored:"}, "connections.other.token", "no value is stored"),
    ("chat", {"token": "env:ACME_TOKEN", "workspace": ["not", "a", "string"]}, "connections.chat.workspace",
     "valid string"),
    ("chat", {"tokn": "x"}, "connections.chat.tokn", "unknown key"),
], ids=["env-unset", "file-missing", "file-escapes", "file-absolute", "nothing-stored", "config-invalid",
        "unknown-key"])
def test_validate_connection_errors(tmp_path, name, settings_, field, fragment):
    """Unresolvable references and invalid configs are RulesErrors on the connection's field, without secrets."""
    (tmp_path.parent / "outside.txt").write_text("secret")
    spec = ConnectionSpec(integration="fake", **settings_)
    with pytest.raises(RulesError) as caught:
        validate_connection(name, spec, REGISTRY, resolve=stored_values, base_dir=tmp_path,
                            environ={"ACME_TOKEN": "xoxb-very-secret"}, filename="acme.yaml")
    assert f"acme.yaml: {field}: " in str(caught.value) and fragment in str(caught.value)
    assert "xoxb-very-secret" not in str(caught.value)


def test_validate_connection_unknown_integration():
    """A connection naming an integration missing from the registry is refused before anything resolves."""
    with pytest.raises(RulesError, match="connections.chat.integration: unknown integration 'slack'"):
        validate_connection("chat", ConnectionSpec(integration="slack", token="t"), REGISTRY)


def test_validate_connection_reads_os_environ(monkeypatch):
    """Without an explicit environ, env: reads the process environment."""
    monkeypatch.setenv("RULES_TEST_FAKE_TOKEN", "from-os")
    spec = ConnectionSpec(integration="fake", token="env:RULES_TEST_FAKE_TOKEN")
    assert validate_connection("chat", spec, REGISTRY) == {"token": "from-os"}


def test_stored_without_resolver():
    """stored: needs a resolver (the caller's database); without one it is an error."""
    with pytest.raises(RulesError, match="no value is stored"):
        validate_connection("chat", ConnectionSpec(integration="fake", token="stored:"), REGISTRY)


def test_redact_connection():
    """Secret literals become stored:, references and plain settings are exported as they are."""
    spec = ConnectionSpec(integration="fake", token="xoxb-1", signing_secret="env:SIGNING", workspace="acme")
    assert redact_connection(spec, FakeConfig) == {"integration": "fake", "token": "stored:",
                                                   "signing_secret": "env:SIGNING", "workspace": "acme"}
    optional_secret = ConnectionSpec(integration="fake", token="env:T", signing_secret="shh")
    assert redact_connection(optional_secret, FakeConfig)["signing_secret"] == "stored:"


# --- Properties --------------------------------------------------------------------------------

KEYS = ["account", "connections", "rules", "id", "name", "timezone", "region", "business_hours", "integration",
        "token", "on", "if", "do", "use", "action", "with", "enabled", "channel", "text", "chat", "mon-fri", "gte",
        "exists", "glob", "caller.number"]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
           | st.sampled_from([ACCOUNT_ID, "America/New_York", "fake", "chat", "notify", "call.missed", "virtualpbx.*",
                              "+1*", "08:30-17:30", "{{ caller.name }", "{{ x | phone }}", "env:T", "stored:"]))
VALUES = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=4),
                      max_leaves=30)


def _load_or_rules_error(text: str) -> None:
    try:
        load_rules(text, filename="fuzz.yaml", registry=REGISTRY)
    except RulesError as error:
        assert error.problems and str(error).startswith("fuzz.yaml: ")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.lists(st.sampled_from(["a:", " b", "- ", "[", "]", "{", "}", "&x", "*x", "!!",
                                                          "'", '"', "\n", "  ", ":", ",", "?", "|", ">", "#", "on",
                                                          "<<:", "%YAML 1.1"]), max_size=40).map("".join))
def test_random_text_only_raises_rules_error(text):
    """Arbitrary text either loads or raises RulesError, never anything else."""
    _load_or_rules_error(text)


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_random_documents_only_raise_rules_error(document):
    """Arbitrary YAML documents either load or raise RulesError."""
    _load_or_rules_error(yaml.safe_dump(document))


RULE_PARTS = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["r1", "r2", ""]) | SCALARS,
    "on": st.sampled_from([*KNOWN_EVENT_TYPES, "call.*", "nope.*", "x"]) | st.lists(st.sampled_from(KNOWN_EVENT_TYPES))
    | SCALARS,
    "if": st.dictionaries(st.sampled_from(["direction", "caller.number", "duration", "business_hours", "a..b"]),
                          SCALARS | st.lists(SCALARS, max_size=3)
                          | st.dictionaries(st.sampled_from(["eq", "gte", "in", "exists", "glob", "bogus"]),
                                            SCALARS | st.lists(SCALARS, max_size=2), max_size=3), max_size=3) | SCALARS,
    "do": st.lists(st.fixed_dictionaries({}, optional={
        "use": st.sampled_from(["chat", "nope"]) | SCALARS,
        "action": st.sampled_from(["notify", "post"]) | SCALARS,
        "with": st.dictionaries(st.sampled_from(["channel", "text", "blocks", "chanel"]), VALUES, max_size=4) | SCALARS,
    }), max_size=3) | SCALARS,
    "enabled": SCALARS,
    "extra": SCALARS,
})


@settings(max_examples=400, deadline=None)
@given(st.lists(RULE_PARTS, max_size=3))
def test_random_rules_only_raise_rules_error(rules):
    """A valid account with random, mostly plausible rules either loads or raises RulesError."""
    document = base_document()
    document["rules"] = rules
    _load_or_rules_error(yaml.safe_dump(document))


TEMPLATES = st.sampled_from(["plain", "{{ caller.name }}", "{{ caller.number | phone }}", "{{ duration | duration }}",
                             "{{ occurred_at | localtime }}", "{{ nobody }}", "{{ caller.name ~ duration }}"]) \
    | st.text(max_size=20).filter(lambda text: "{" not in text)  # "{%" alone is a template syntax error: invalid
SIMPLE = st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.sampled_from(["+1*", "inbound", "1555*"])
CONDITION = (SIMPLE | st.lists(SIMPLE, min_size=1, max_size=3)
             | st.builds(lambda op, number: {op: number}, st.sampled_from(["gt", "gte", "lt", "lte"]), st.integers())
             | st.builds(lambda values: {"in": values}, st.lists(SIMPLE, min_size=1, max_size=3))
             | st.builds(lambda flag: {"exists": flag}, st.booleans())
             | st.builds(lambda pattern: {"glob": pattern}, st.text(max_size=8)))
VALID_RULE = st.fixed_dictionaries({
    # Mostly types the test events have, so that rules match often enough to exercise plan() and rendering.
    "on": st.sampled_from(["call.missed", "call.*", ["call.ended", "call.missed"], "virtualpbx.*", "voicemail.new"]),
    "if": st.just({}) | st.dictionaries(st.sampled_from(["direction", "caller.number", "duration", "caller.name"]),
                                        CONDITION, max_size=2),
    "do": st.lists(st.fixed_dictionaries({"use": st.just("chat"), "action": st.just("notify"),
                                          "with": st.fixed_dictionaries({"channel": TEMPLATES, "text": TEMPLATES})}),
                   min_size=1, max_size=2),
    "enabled": st.sampled_from([True, True, False]),
})
EVENT_DATA = st.fixed_dictionaries({
    "direction": st.sampled_from(["inbound", "outbound"]),
    "caller": st.fixed_dictionaries({"name": st.sampled_from(["Bob", None]) | SIMPLE,
                                     "number": st.sampled_from(["15551234567", "+442079460958"]) | SIMPLE}),
    "duration": st.integers(min_value=0, max_value=10_000) | SIMPLE,
})


@settings(max_examples=300, deadline=None)
@given(st.lists(VALID_RULE, min_size=1, max_size=4), st.sampled_from(["call.missed", "call.ended"]), EVENT_DATA,
       st.datetimes(timezones=st.just(timezone.utc)))
def test_valid_rules_plan_and_render(rules, event_type, data, moment):
    """Valid rules always load; plan() keeps file order; rendering fails only with PermanentError."""
    document = base_document()
    document["rules"] = [{"name": f"rule {index}", **rule} for index, rule in enumerate(rules)]
    rules_file = load_document(document)
    event = make_event(data, type=event_type, at=moment)
    planned = plan(rules_file, event)
    positions = [(int(action.rule_name.split()[1]), action.index) for action in planned]
    assert positions == sorted(positions)
    assert all(rules[rule_index]["enabled"] for rule_index, _ in positions)
    for action in planned:
        try:
            rendered = render_action(action, event, rules_file.account)
        except PermanentError as error:
            assert str(error).startswith(f"rule {action.rule_name!r}: do[{action.index}].with.")
        else:
            assert set(rendered) == {"channel", "text"}


def test_event_values_are_escaped_for_the_integration_but_rule_text_is_not():
    """A caller named '<!channel>' stays literal in Slack text; the rule's own '<@U123>' mention still works."""
    from integrations.slack import SlackIntegration

    planned = PlannedAction(rule_name="r", index=0, connection="chat", integration="slack", action="post_message",
                            params_template={"text": "<@U123> call from {{ caller.name }} & {{ caller.number }}"})
    event = Event(type="call.missed", account_id="a" * 32, key="k",
                  occurred_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
                  data={"caller": {"name": "<!channel> & co", "number": "+15551230000"}})
    account = AccountSpec(id="a" * 32, name="Acme", timezone="UTC")
    escaped = render_action(planned, event, account, escape=SlackIntegration.template_escape)
    assert escaped["text"] == "<@U123> call from &lt;!channel&gt; &amp; co & +15551230000"
    assert render_action(planned, event, account)["text"] == "<@U123> call from <!channel> & co & +15551230000"


@pytest.mark.parametrize("crm, message", [
    ({"signing": "off"}, "crm.signing"),
    ({"signing": "none", "signing_secret": "whsec_x"}, "either signing_secret or signing: none"),
], ids=["unknown-value", "both"])
def test_crm_signing_is_none_or_a_secret_never_both(crm, message):
    """`signing` accepts only the explicit word none, and not together with a signing_secret."""
    document = base_document()
    document["crm"] = crm
    with pytest.raises(RulesError, match=message):
        load_document(document)
    document["crm"] = {"signing": "none"}
    assert load_document(document).crm.signing == "none"
