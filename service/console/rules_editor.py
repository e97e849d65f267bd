"""The rules page's logic: the draft to edit, its problems placed at a line and field, trying a draft on a sample
hook or a stored event, saving it as the tenant, and the recipes gallery. Plain functions: no Flask here."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from service import accounts
from service import rules as rules_mod
from service.console.errors import NotFound
from service.console.settings import RULES_FILENAME, apply_tenant_rules
from service.engine.dryrun import dry_run_text
from service.events import Event, aware
from service.rules.schema import _RulesYamlLoader  # the rules' YAML 1.2-style loader: PyYAML's reads `on:` as True
from service.runtime import Runtime
from service.store.access import User
from service.store.models import Account, RuleSet, StoredEvent

FILENAME = RULES_FILENAME  # how problems name the editor's text (and apply_tenant_rules names it)
RECIPES_DIR = Path(__file__).parent / "recipes"
SAMPLES_DIR = Path(__file__).parent / "samples"
# Each action's templates may use their whole render budget (1 s): bound what one "try it" request can cost.
TRY_MAX_ACTIONS = 10
RECENT_EVENTS = 20


class _RulesYamlDumper(yaml.SafeDumper):
    """Dumps for the rules loader: plain scalars quoted only where that loader would misread them (not `on`)."""


_RulesYamlDumper.yaml_implicit_resolvers = _RulesYamlLoader.yaml_implicit_resolvers
# What an AccountError line starts with: the editor's file name, or "<rules version N>" from a rollback.
_SOURCE_PREFIX = re.compile(rf"^(?:{re.escape(RULES_FILENAME)}|<[^<>\n]{{1,100}}>): ")
_YAML_MARK = re.compile(r"at line (\d+), column (\d+)")
_PATH_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")
_ERROR_LINE = re.compile(r"^(?:rule (?P<q>['\"])(?P<rule>.*?)(?P=q): )?(?:(?P<field>[\w\-\[\].]+): )?(?P<message>.*)$",
                         re.S)


@dataclass(frozen=True)
class Problem:
    """One problem of a draft: where (1-based line and column, when known), the rule and field, and what."""

    line: int | None
    column: int | None
    rule: str | None
    field: str
    message: str


@dataclass(frozen=True)
class Recipe:
    """A starting rules file from the gallery: its key (file stem), title, one-line description and YAML."""

    key: str
    title: str
    about: str
    text: str


@dataclass(frozen=True)
class Sample:
    """A bundled hook (or a call's hooks in order) to try rules on."""

    key: str
    title: str
    payloads: list[dict[str, Any]]


RECIPE_KEYS = ("missed_call_slack", "voicemail_trello", "call_log_sheets", "crm_sms")
SAMPLE_TITLES = {"missed_call": "Missed call (Kazoo missed_call notification)",
                 "answered_call": "Answered call (channel create, answer, bridge, destroy)",
                 "voicemail": "New voicemail (Kazoo voicemail_new notification)"}


# --- the draft ----------------------------------------------------------------------------------


def draft_text(session: Session, account_id: str) -> str:
    """The account's applied rules (secrets as ``stored:``), or a minimal valid file when it has none yet."""
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound("no such account")
    if session.get(RuleSet, account_id) is not None:
        # Dumped again for the rules' loader: `on:` unquoted and each template on one line, as people write them.
        exported = yaml.load(accounts.export_rules(session, account_id), Loader=_RulesYamlLoader)  # noqa: S506
        return _dump(exported)
    return _dump({"account": {"id": account.id, "name": account.name, "timezone": account.timezone},
                  "connections": {}, "rules": []})


def _dump(document: dict[str, Any]) -> str:
    """YAML for the editor: keys in their order, quoted only where the rules' loader needs it."""
    return yaml.dump(document, Dumper=_RulesYamlDumper, sort_keys=False, allow_unicode=True, width=1000)


def check_draft(rt: Runtime, account_id: str, text: str) -> list[Problem]:
    """Every schema problem of the draft, each placed at its line when it can be (empty: the draft is valid)."""
    try:
        parsed = rules_mod.load_rules(text, filename=FILENAME, registry=rt.registry)
    except rules_mod.RulesError as exc:
        return problems_of(exc, text)
    if parsed.account.id != account_id.lower():
        return [Problem(*locate(text, None, "account.id"), None, "account.id",
                        f"must be this account's id ({account_id}), not {parsed.account.id}")]
    return []


def problems_of(error: Exception, text: str) -> list[Problem]:
    """The problems a RulesError or AccountError reports, placed in ``text`` at the field (or the YAML mark)."""
    if isinstance(error, rules_mod.RulesError):
        found = [(p.rule, p.field, p.message) for p in error.problems]
    else:
        found = []
        for line in str(error).splitlines():
            line = _SOURCE_PREFIX.sub("", line)
            match = _ERROR_LINE.match(line)
            found.append((match["rule"], match["field"] or "", match["message"]))
    problems = []
    for rule, field, message in found:
        mark = _YAML_MARK.search(message)
        line, column = (int(mark[1]), int(mark[2])) if mark else locate(text, rule, field)
        problems.append(Problem(line, column, rule, field, message))
    return problems


def locate(text: str, rule: str | None, field: str) -> tuple[int | None, int | None]:
    """The 1-based (line, column) of ``field`` (dotted, ``[n]`` for items; relative to the named rule), else Nones.

    Walks as far down the path as the YAML goes, so a missing key points at the mapping that lacks it.
    """
    try:
        node = yaml.compose(text, Loader=_RulesYamlLoader)
    except (yaml.YAMLError, RecursionError):  # PyYAML recurses once per nesting level; the error says why
        return None, None
    if node is None:
        return None, None
    mark = node.start_mark
    if rule is not None:
        rules = _child(node, "rules")
        for item in rules.value if isinstance(rules, yaml.SequenceNode) else []:
            name = _child(item, "name")
            if isinstance(name, yaml.ScalarNode) and name.value == rule:
                node, mark = item, item.start_mark
                break
        else:
            return None, None
    parts = [int(index) if index else key for index, key in _PATH_PART.findall(field)]
    while parts:
        if isinstance(node, yaml.SequenceNode) and isinstance(parts[0], int) and parts[0] < len(node.value):
            node = node.value[parts.pop(0)]
            mark = node.start_mark
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        # Keys may hold dots themselves (conditions such as caller.number): try the longest match first.
        for size in range(len(parts), 0, -1):
            if all(isinstance(p, str) for p in parts[:size]):
                key = ".".join(parts[:size])
                pair = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
                if pair:
                    del parts[:size]
                    mark, node = pair[0].start_mark, pair[1]
                    break
        else:
            break
    return mark.line + 1, mark.column + 1


def _child(node: yaml.Node, key: str) -> yaml.Node | None:
    """The value node under ``key`` of a mapping node, else None."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


# --- trying and saving --------------------------------------------------------------------------


def recent_events(session: Session, account_id: str, limit: int = RECENT_EVENTS) -> list[StoredEvent]:
    """The account's newest stored events, to try a draft on."""
    return list(session.scalars(sa.select(StoredEvent).where(StoredEvent.account_id == account_id)
                                .order_by(StoredEvent.id.desc()).limit(limit)))


def try_draft(rt: Runtime, account_id: str, text: str, *, sample: str | None = None,
              event_id: int | None = None) -> dict[str, Any]:
    """Dry run the unsaved draft on a bundled sample or on one of the account's stored events (nothing is sent).

    Raises RulesError/AccountError when the draft is invalid, NotFound for an unknown sample or an event
    that is not this account's.
    """
    if event_id is not None:
        with rt.sessions() as session:
            row = session.get(StoredEvent, event_id)
            if row is None or row.account_id != account_id:
                raise NotFound("no such event")
            event = Event(type=row.type, account_id=row.account_id, key=row.key,
                          occurred_at=aware(row.occurred_at), data=dict(row.data or {}))
        return dry_run_text(rt, account_id, text, events=[event], filename=FILENAME, max_actions=TRY_MAX_ACTIONS)
    found = samples().get(sample or "")
    if found is None:
        raise NotFound("no such sample")
    payloads = [{**payload, "account_id": account_id} for payload in found.payloads]
    return dry_run_text(rt, account_id, text, payloads=payloads, filename=FILENAME, max_actions=TRY_MAX_ACTIONS)


def save_draft(rt: Runtime, account_id: str, text: str, *, actor: str) -> RuleSet:
    """Apply the draft to the account atomically as tenant-supplied rules, and audit it; errors change nothing."""
    with rt.sessions.begin() as session:
        ruleset = apply_tenant_rules(session, rt, account_id, text, actor=actor, what="saved in the rules editor")
        session.flush()
        session.expunge(ruleset)
    return ruleset


# --- recipes and samples ------------------------------------------------------------------------


@functools.cache
def recipes() -> dict[str, Recipe]:
    """The gallery's recipes (package data ``recipes/<key>.yaml``), by key, in the gallery's order."""
    found = {}
    for key in RECIPE_KEYS:
        text = (RECIPES_DIR / f"{key}.yaml").read_text(encoding="utf-8")
        header = dict(re.findall(r"^# (title|about): (.+)$", text, re.M))
        found[key] = Recipe(key, header["title"], header["about"], text)
    return found


@functools.cache
def samples() -> dict[str, Sample]:
    """The bundled Kazoo hooks to try rules on (package data), by key."""
    return {key: Sample(key, title, json.loads((SAMPLES_DIR / f"{key}.json").read_text(encoding="utf-8")))
            for key, title in SAMPLE_TITLES.items()}


def fill_recipe(draft: str, key: str, *, account: Account) -> str:
    """The draft with a recipe's rules added: an existing connection of the same integration is reused, else the
    recipe's (with placeholder credentials to replace) is added; the draft's account section is kept.

    A draft that is not a YAML mapping is replaced by the recipe for this account.
    """
    recipe = recipes().get(key)
    if recipe is None:
        raise NotFound("no such recipe")
    adding = yaml.load(recipe.text, Loader=_RulesYamlLoader)  # noqa: S506 - a SafeLoader subclass
    try:  # the rules' own parser: a draft of aliases to a long anchor would expand here (and be sent back) else
        current = rules_mod.parse_yaml(draft, FILENAME)
    except rules_mod.RulesError:
        current = None
    if not isinstance(current, dict):
        current = {}
    merged = dict(current)
    merged["account"] = current.get("account") if isinstance(current.get("account"), dict) else \
        {"id": account.id, "name": account.name, "timezone": account.timezone}
    if "crm" in adding and "crm" not in current:
        merged["crm"] = adding["crm"]
    connections = dict(current.get("connections") or {}) if isinstance(current.get("connections"), dict) else {}
    renamed = {}
    for name, spec in adding["connections"].items():
        same = next((have for have, have_spec in connections.items()
                     if isinstance(have_spec, dict) and have_spec.get("integration") == spec["integration"]), None)
        if same is None:
            same = _unused(name, connections, "-")
            connections[same] = spec
        renamed[name] = same
    merged["connections"] = connections
    rules = list(current.get("rules") or []) if isinstance(current.get("rules"), list) else []
    taken = {r.get("name") for r in rules if isinstance(r, dict)}
    for rule in adding["rules"]:
        rule = {**rule, "name": _unused(rule["name"], taken, " "),
                "do": [{**action, "use": renamed.get(action["use"], action["use"])} for action in rule["do"]]}
        taken.add(rule["name"])
        rules.append(rule)
    merged["rules"] = rules
    order = ["account", "crm", "connections", "rules"]
    merged = {k: merged[k] for k in order if k in merged} | {k: v for k, v in merged.items() if k not in order}
    return _dump(merged)


def _unused(name: str, taken, separator: str) -> str:
    """``name``, or ``name<separator>2``, ``3``... whichever is not taken yet."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}{separator}{number}"
    return candidate


def actor_labels(session: Session, actors: list[str]) -> dict[str, str]:
    """How the history names each audit actor: a member's email, "an operator" (staff stay unnamed to tenants),
    else the actor as stored (``operator-cli``, ``api_key:<id>``...)."""
    ids = {int(actor[5:]) for actor in actors if actor.startswith("user:") and actor[5:].isdigit()}
    users = {u.id: u for u in session.scalars(sa.select(User).where(User.id.in_(ids)))} if ids else {}
    labels = {}
    for actor in actors:
        user = users.get(int(actor[5:])) if actor.startswith("user:") and actor[5:].isdigit() else None
        labels[actor] = actor if user is None else ("an operator" if user.is_operator else user.email)
    return labels


def event_label(row: StoredEvent) -> str:
    """A short label for a stored event in the "try it" picker."""
    when = aware(row.occurred_at).strftime("%Y-%m-%d %H:%M UTC") if isinstance(row.occurred_at, datetime) else ""
    data = row.data or {}
    caller = data.get("caller") if isinstance(data.get("caller"), dict) else {}
    who = caller.get("number") or data.get("phone") or ""
    return " · ".join(part for part in (row.type, str(who), when) if part)
