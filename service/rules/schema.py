"""Account rules: the YAML schema, loading and validation (matching and rendering: ``matching``).

One YAML file per account::

    account:
      id: 91eb05e5c68d7ca05e7618b6821d2d16   # Kazoo account id: 32 hex characters
      name: Acme Dental
      timezone: America/New_York             # IANA name; business hours and `localtime` use it
      region: US                             # phone number region (default US)
      business_hours:                        # optional; days: mon..sun, "mon-fri", "sat,sun", "fri-mon"
        mon-fri: "08:30-17:30"               # one "HH:MM-HH:MM" range (end may be 24:00) ...
        sat: ["09:00-12:00", "13:00-15:00"]  # ... or several
      alert_connection: team-slack           # optional; must name a connection
      retention_days: 90                     # optional, 1..3650: days events and the delivery log are kept
    connections:                             # name -> integration + that integration's Config keys
      team-slack: {integration: slack, bot_token: env:ACME_SLACK_TOKEN}
      call-log: {integration: google_sheets, spreadsheet_id: "1AbC", credentials: file:./sa.json}
    crm:                                     # optional: how POST /hooks/crm/<token> bodies become crm.event
      event_id: id                           # dotted path to the CRM's event id (de-duplication); else a hash
      fields: {phone: contact.phone, first_name: contact.first_name}   # template variable -> dotted path
      opt_out: contact.sms_opt_out           # truthy -> the `phone` field's number joins the opt-out list
      signing_secret: env:ACME_CRM_SECRET    # Standard Webhooks secret (whsec_...): HMAC required; or
      # signing: none                        # accept unsigned CRM hooks (token only); without one of the
                                             # two, the CRM hook refuses every request (401)
    rules:
      - name: missed calls to the front desk # unique within the file
        enabled: true                        # optional, default true
        on: call.missed                      # a type, a list of types, or a glob like virtualpbx.*
        if: {direction: inbound, caller.number: "+1*", duration: {gte: 30}, business_hours: true}
        do:                                  # non-empty; run in order, each as its own task
          - use: team-slack                  # a connection name
            action: post_message             # an action of that connection's integration
            with: {channel: "#front-desk", text: "Missed call from {{ caller.name }}"}

Unknown keys are errors everywhere. Connection values may be literal or references, resolved by
:func:`validate_connection`: ``env:NAME`` (environment variable), ``file:PATH`` (a file inside the
rules file's directory) or ``stored:`` (keep the value already stored for this connection).
``env:`` and ``file:`` read the server, so they are the operator's alone: in rules a tenant supplied
they are refused (``env:`` is allowed for names under the operator's ``tenant_env_prefix``), and
``env:PBXRELAY_*`` (the service's own settings and keys) is refused for everyone.

Event types (``on``): call.started, call.answered, call.ended, call.missed, voicemail.new,
crm.event and virtualpbx.<hook> for each of :data:`service.pbx.payloads.KNOWN_HOOKS`, or fnmatch globs over them.

Conditions (``if``): every key must hold. A key is a dotted path into the event data (``event.type``
and ``event.key`` are there too); a field that is missing never matches, except ``{exists: false}``.

* ``field: value`` is equality. Strings compare case-insensitively, because Kazoo's casing is
  inconsistent and its ids are lowercase hex, so no id is confused. Numbers compare numerically
  (numeric strings included); ``true``/``false`` also match the strings "true"/"false"; ``null``
  matches a field that is present and null. Phone-number-like strings also match when their digits
  or their E.164 forms (in the account's region) are equal: "+15551234567" == "(555) 123-4567".
* ``field: [a, b]`` matches any of the values.
* A string with ``*``, ``?`` or ``[`` is an fnmatch glob. It is tried against the value as sent and,
  for phone numbers, against its digits and its E.164 form, so "+1*" matches "15551234567".
* ``field: {op: operand, ...}``, every operator must hold: eq, ne, gt, gte, lt, lte (numbers),
  in, not_in (lists), glob (a string), exists (true/false).
* ``business_hours: true|false`` (reserved key) compares the event's time, in the account's time
  zone, with ``account.business_hours``.

In YAML, only ``true``/``false`` are booleans (so ``on:`` stays a key and region ``NO`` stays a
string), only plain decimals are numbers (so ``+15551234567`` and ``0201234567`` stay strings),
and dates stay strings.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Literal, Mapping, get_args
from zoneinfo import ZoneInfo

import phonenumbers
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretBytes,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from integrations.base import Integration
from service.events import CALL_EVENT_TYPES
from service.pbx.payloads import KNOWN_HOOKS
from service.rules import templating

MAX_RULES_BYTES = 1024 * 1024
# The largest request carrying a rules document (API or console form): the document plus its wrapping.
MAX_RULES_REQUEST_BYTES = MAX_RULES_BYTES + 64 * 1024
MAX_NESTING = 32
MAX_VALUES = 100_000  # after YAML alias expansion: keeps "billion laughs" documents from stalling us
MAX_REFERENCED_FILE_BYTES = 64 * 1024
KNOWN_EVENT_TYPES = (*CALL_EVENT_TYPES, "crm.event", *(f"virtualpbx.{hook}" for hook in KNOWN_HOOKS))
CONDITION_OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "glob", "exists")
BUSINESS_HOURS_KEY = "business_hours"
STORED_REFERENCE = "stored:"
# Who supplied a rules file: the operator (CLI, trusted with the server's env and files) or a tenant.
OPERATOR, TENANT = "operator", "tenant"
SUPPLIERS = (OPERATOR, TENANT)
# The service's own settings, keys included: never a connection's value, whoever asks.
RESERVED_ENV_PREFIX = "PBXRELAY_"

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS_RANGE = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
_FIELD_PATH = re.compile(r"^[^.\s]+(?:\.[^.\s]+)*$")
_CONNECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
GLOB_CHARS = re.compile(r"[*?\[]")
PHONE_LIKE = re.compile(r"^\+?[0-9 ().-]*[0-9][0-9 ().-]*$")
PHONE_PATTERN = re.compile(r"^[+0-9 ().*?\[\]!-]*[0-9][+0-9 ().*?\[\]!-]*$")
# Separators to drop from a phone glob; bracket groups are kept whole so "[0-5]" stays a range.
PHONE_PATTERN_SEPARATORS = re.compile(r"(\[[^\]]*\])|[+ ().-]")

# (connection name, config key) -> the value stored for it, or None; supplied by the caller with a DB.
StoredValueResolver = Callable[[str, str], Any]


@dataclass(frozen=True)
class RulesProblem:
    """One thing wrong with a rules file: the rule (if any), the dotted field path, and what."""

    rule: str | None
    field: str
    message: str


class RulesError(ValueError):
    """A rules file or connection that cannot be used; str() lists every problem, one per line."""

    def __init__(self, filename: str, problems: list[RulesProblem] | tuple[RulesProblem, ...] = (), *,
                 rule: str | None = None, field: str = "", message: str = "") -> None:
        self.filename = filename
        self.problems = ([RulesProblem(rule, field, message)] if message else []) + list(problems)
        super().__init__(filename, self.problems)  # these args let the error pickle and unpickle whole

    @property
    def rule(self) -> str | None:
        """The rule of the first problem."""
        return self.problems[0].rule

    @property
    def field(self) -> str:
        """The field path of the first problem."""
        return self.problems[0].field

    @property
    def message(self) -> str:
        """The message of the first problem."""
        return self.problems[0].message

    def __str__(self) -> str:
        lines = []
        for problem in self.problems:
            where = [self.filename]
            if problem.rule is not None:
                where.append(f"rule {problem.rule!r}")
            if problem.field:
                where.append(problem.field)
            lines.append(": ".join([*where, problem.message]))
        return "\n".join(lines)


# --- YAML --------------------------------------------------------------------------------------


class _RulesYamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2-style plain scalars (see the module docstring for why)."""


_RulesYamlLoader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first_chars in (
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^-?(?:0|[1-9][0-9]*)$", list("-0123456789")),
    ("tag:yaml.org,2002:float", r"^-?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$", list("-.0123456789")),
    ("tag:yaml.org,2002:merge", r"^<<$", ["<"]),
):
    _RulesYamlLoader.add_implicit_resolver(_tag, re.compile(_pattern), _first_chars)


def _check_shape(document: Any) -> str | None:
    """Why ``document`` is too deep or too big once aliases are expanded, or None; iterative on purpose."""
    stack = [(document, 1)]
    values = characters = 0
    while stack:
        node, depth = stack.pop()
        values += 1
        if values > MAX_VALUES:
            return f"the document expands to more than {MAX_VALUES} values (YAML aliases?)"
        if depth > MAX_NESTING:
            return f"the document is nested more than {MAX_NESTING} levels deep"
        if isinstance(node, str):
            # Few aliases of one long anchor are few values but much text, and the document is written out
            # again whole (stored versions, exports, every settings edit): it must fit the file limit.
            characters += len(node)
            if characters > MAX_RULES_BYTES:
                return f"the document expands to more than {MAX_RULES_BYTES // 1024} KiB of text (YAML aliases?)"
        elif isinstance(node, dict):
            stack.extend((child, depth + 1) for pair in node.items() for child in pair)
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return None


def parse_yaml(text: str, filename: str) -> dict[str, Any]:
    """The YAML mapping of a rules file, refused (RulesError) when too large, too deep or expanding too far."""
    # len() first: characters never outnumber UTF-8 bytes, so a huge string is refused without encoding it.
    if len(text) > MAX_RULES_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_RULES_BYTES:
        raise RulesError(filename, message=f"the file is larger than {MAX_RULES_BYTES // 1024} KiB")
    try:
        document = yaml.load(text, Loader=_RulesYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        detail = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise RulesError(filename, message=f"invalid YAML{where}: {detail}") from None
    except yaml.YAMLError as exc:
        raise RulesError(filename, message=f"invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise RulesError(filename, message=f"the document is nested more than {MAX_NESTING} levels deep") from None
    except ValueError as exc:  # PyYAML lets int() errors escape, e.g. more than 4300 digits
        raise RulesError(filename, message=f"invalid YAML: {exc}") from None
    if not isinstance(document, dict):
        got = "an empty file" if document is None else f"a {type(document).__name__}"
        raise RulesError(filename, message=f"the file must be a mapping with account, connections and rules, "
                                           f"not {got}")
    shape_problem = _check_shape(document)
    if shape_problem:
        raise RulesError(filename, message=shape_problem)
    return document


# --- Models ------------------------------------------------------------------------------------


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def weekdays(day_spec: str) -> set[int]:
    """The weekday numbers (Monday = 0) of "mon", "mon-fri", "sat,sun" or "fri-mon"; ValueError otherwise."""
    days: set[int] = set()
    for part in day_spec.lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if first not in WEEKDAYS or (last and last not in WEEKDAYS):
            raise ValueError(f"{day_spec!r} is not a day or day range (use {', '.join(WEEKDAYS)}, "
                             f"e.g. mon-fri or sat,sun)")
        start = WEEKDAYS.index(first)
        span = (WEEKDAYS.index(last) - start) % 7 if last else 0
        days.update((start + offset) % 7 for offset in range(span + 1))
    return days


def minutes_range(hours: str) -> tuple[int, int]:
    """The (start, end) minutes of day of "HH:MM-HH:MM"; ValueError otherwise."""
    match = _HOURS_RANGE.match(hours.replace(" ", ""))
    if not match:
        raise ValueError(f"{hours!r} is not a HH:MM-HH:MM range")
    start_h, start_m, end_h, end_m = map(int, match.groups())
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if start_h > 23 or start_m > 59 or end_m > 59 or end > 24 * 60:
        raise ValueError(f"{hours!r} is not a time of day (00:00 to 24:00)")
    if start >= end:
        raise ValueError(f"{hours!r} ends before it starts (split overnight hours across two days)")
    return start, end


def _check_day_spec(day_spec: str) -> str:
    weekdays(day_spec)
    return day_spec


def _check_hours(hours: str) -> str:
    minutes_range(hours)
    return hours


def _check_stored_name(value: str) -> str:
    if "\x00" in value:  # PostgreSQL text cannot hold NUL, and account and rule names are stored as text
        raise ValueError("must not contain a NUL character (\\0)")
    return value


def _check_account_id(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{32}", value):
        raise ValueError("must be a Kazoo account id: 32 hexadecimal characters")
    return value.lower()


class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountSpec(_StrictModel):
    """The `account:` section: identity, locale and opening hours."""

    id: Annotated[str, AfterValidator(_check_account_id)]
    name: Annotated[str, AfterValidator(_check_stored_name)] = Field(min_length=1, max_length=200)  # its column
    timezone: str
    region: str = "US"
    business_hours: dict[Annotated[str, AfterValidator(_check_day_spec)],
                         Annotated[list[Annotated[str, AfterValidator(_check_hours)]],
                                   BeforeValidator(_one_or_many), Field(min_length=1)]] = Field(default_factory=dict)
    alert_connection: str | None = None
    # Days this account's events, finished deliveries and quarantined hooks are kept (PBXRELAY_RETENTION_DAYS
    # when unset).
    retention_days: int | None = Field(default=None, ge=1, le=3650, strict=True)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError; odd paths give the others
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like America/New_York)") from None
        return value

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = value.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {value!r} (use a two-letter country code like US)")
        return region


class ConnectionSpec(BaseModel):
    """One entry of `connections:`: the integration key plus its Config keys, kept raw until resolved."""

    model_config = ConfigDict(extra="allow")

    integration: str = Field(min_length=1)

    @property
    def settings(self) -> dict[str, Any]:
        """The integration's own config keys (everything but `integration`), unresolved."""
        return dict(self.model_extra or {})


class ActionSpec(_StrictModel):
    """One step of a rule's `do:` list: which connection, which action, with which params."""

    use: str = Field(min_length=1)
    action: str = Field(min_length=1)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")


class Rule(_StrictModel):
    """One rule: when (`on`, `if`) and what (`do`)."""

    name: Annotated[str, AfterValidator(_check_stored_name)] = Field(min_length=1, max_length=200)  # its column
    on: Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_one_or_many), Field(min_length=1)]
    if_: dict[str, Any] | None = Field(default=None, alias="if")
    do: list[ActionSpec] = Field(min_length=1)
    enabled: bool = True


def _check_connection_name(name: str) -> str:
    if not _CONNECTION_NAME.match(name):
        raise ValueError(f"{name!r} is not a connection name (letters, digits, - and _)")
    return name


class CrmSpec(_StrictModel):
    """How the account's CRM webhook bodies map to `crm.event` data."""

    event_id: str | None = Field(default=None, pattern=_FIELD_PATH.pattern)
    fields: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")],
                 Annotated[str, Field(pattern=_FIELD_PATH.pattern)]] = Field(default_factory=dict)
    opt_out: str | None = Field(default=None, pattern=_FIELD_PATH.pattern)
    phone_field: str = "phone"
    signing_secret: str | None = None
    # Unsigned CRM hooks are refused unless the file opts in with exactly `signing: none`.
    signing: Literal["none"] | None = None

    @model_validator(mode="after")
    def _one_signing_choice(self) -> "CrmSpec":
        if self.signing == "none" and self.signing_secret is not None:
            raise ValueError("set either signing_secret or signing: none, not both")
        return self


class RulesFile(_StrictModel):
    """A whole rules file: one account, its connections and its rules."""

    account: AccountSpec
    crm: CrmSpec | None = None
    connections: dict[Annotated[str, AfterValidator(_check_connection_name)], ConnectionSpec] = Field(
        default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)


# --- Validation --------------------------------------------------------------------------------


def _dotted(path: tuple[Any, ...] | list[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as list[X], dict[str, X] or X | None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found:
            return found
    return None


def _input_names(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """The keys a model accepts (aliases where set), in declaration order."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _allowed_keys(location: tuple[Any, ...]) -> list[str]:
    """The keys the model holding ``location`` accepts, by walking the RulesFile annotations."""
    annotation: Any = RulesFile
    for part in location[:-1]:
        model = _model_in(annotation)
        if model and isinstance(part, str) and part in _input_names(model):
            annotation = _input_names(model)[part].annotation
        # list indexes and dict keys (connection names) keep the annotation: its element model comes next
    model = _model_in(annotation)
    return list(_input_names(model)) if model else []


def _pydantic_message(error: Mapping[str, Any], location: tuple[Any, ...], allowed: list[str]) -> str:
    if error["type"] == "extra_forbidden":
        return f"unknown key (expected one of: {', '.join(allowed)})" if allowed else "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    return error["msg"]


def _problems_from_pydantic(exc: ValidationError, document: Any, *, prefix: tuple[Any, ...] = ()) -> list[RulesProblem]:
    problems = []
    for error in exc.errors():
        location = prefix + tuple(part for part in error["loc"] if part != "[key]")
        message = _pydantic_message(error, location, _allowed_keys(location) if not prefix else [])
        rule = None
        if len(location) >= 3 and location[0] == "rules" and isinstance(location[1], int):
            raw_rule = document["rules"][location[1]] if isinstance(document, dict) else None
            if isinstance(raw_rule, dict) and isinstance(raw_rule.get("name"), str) and raw_rule["name"]:
                rule, location = raw_rule["name"], location[2:]
        problems.append(RulesProblem(rule, _dotted(location), message))
    return problems


def _connection_key_problems(name: str, spec: ConnectionSpec,
                             registry: Mapping[str, type[Integration]]) -> Iterator[RulesProblem]:
    """Unknown integration, unknown or missing Config keys and malformed references; values stay unresolved."""
    integration = registry.get(spec.integration)
    if integration is None:
        yield RulesProblem(None, f"connections.{name}.integration",
                           f"unknown integration {spec.integration!r} (available: {', '.join(sorted(registry))})")
        return
    accepted = _input_names(integration.Config)
    for key, value in spec.settings.items():
        if key not in accepted:
            yield RulesProblem(None, f"connections.{name}.{key}",
                               f"unknown key ({spec.integration} takes {', '.join(accepted)})")
        elif isinstance(value, str) and value.startswith("env:") and not _ENV_NAME.match(value[4:]):
            yield RulesProblem(None, f"connections.{name}.{key}", f"{value!r} is not env:VARIABLE_NAME")
        elif isinstance(value, str) and value.startswith("file:") and not value[5:]:
            yield RulesProblem(None, f"connections.{name}.{key}", "file: needs a path")
    for key, field in accepted.items():
        if field.is_required() and key not in spec.settings:
            yield RulesProblem(None, f"connections.{name}.{key}", "required key is missing")


def _event_type_problem(pattern: str) -> str | None:
    if GLOB_CHARS.search(pattern):
        if not any(fnmatch.fnmatchcase(known, pattern) for known in KNOWN_EVENT_TYPES):
            return f"{pattern!r} matches no known event type ({', '.join(KNOWN_EVENT_TYPES)})"
    elif pattern not in KNOWN_EVENT_TYPES:
        return f"unknown event type {pattern!r} (known: {', '.join(KNOWN_EVENT_TYPES)})"
    return None


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def is_number(value: Any) -> bool:
    """Whether a YAML value is a number (booleans are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _operator_problem(operator: str, operand: Any) -> str | None:
    if operator not in CONDITION_OPERATORS:
        return f"unknown operator (use {', '.join(CONDITION_OPERATORS)})"
    if operator in ("gt", "gte", "lt", "lte") and not is_number(operand):
        return "needs a number"
    if operator in ("in", "not_in") and not (isinstance(operand, list) and operand and all(map(_is_scalar, operand))):
        return "needs a non-empty list of values"
    if operator == "glob" and not isinstance(operand, str):
        return "needs a pattern string"
    if operator == "exists" and not isinstance(operand, bool):
        return "needs true or false"
    if operator in ("eq", "ne") and not _is_scalar(operand):
        return "needs a single value"
    return None


def _condition_problems(conditions: dict[str, Any], account: AccountSpec) -> Iterator[tuple[str, str]]:
    """(field, message) for each malformed condition."""
    for key, expected in conditions.items():
        path = f"if.{key}"
        if key == BUSINESS_HOURS_KEY:
            if not isinstance(expected, bool):
                yield path, "needs true or false"
            elif not account.business_hours:
                yield path, "account.business_hours is not set"
        elif not _FIELD_PATH.match(key):
            yield path, "not a field path (use dotted names like caller.number)"
        elif isinstance(expected, dict):
            if not expected:
                yield path, f"empty operator mapping (use {', '.join(CONDITION_OPERATORS)})"
            for operator, operand in expected.items():
                problem = _operator_problem(operator, operand)
                if problem:
                    yield f"{path}.{operator}", problem
        elif isinstance(expected, list):
            if not expected or not all(map(_is_scalar, expected)):
                yield path, "needs a non-empty list of values"
        elif not _is_scalar(expected):
            yield path, "needs a value, a list of values or an operator mapping"


def _template_problems(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(field, message) for each string under ``value`` that is not a valid template."""
    if isinstance(value, str):
        try:
            templating.compile_check(value)
        except templating.TemplateError as exc:
            yield path, f"template {exc.message}"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _template_problems(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _template_problems(item, f"{path}[{index}]")


def _action_problems(action: ActionSpec, index: int, rules_file: RulesFile,
                     registry: Mapping[str, type[Integration]]) -> Iterator[tuple[str, str]]:
    """(field, message) for one `do:` entry checked against the connections and the registry."""
    connection = rules_file.connections.get(action.use)
    if connection is None:
        defined = ", ".join(rules_file.connections) or "none"
        yield f"do[{index}].use", f"unknown connection {action.use!r} (defined: {defined})"
        return
    integration = registry.get(connection.integration)
    if integration is None:
        return  # reported once, at the connection
    params_model = integration.actions.get(action.action)
    if params_model is None:
        yield f"do[{index}].action", (f"unknown action {action.action!r} for {connection.integration} "
                                      f"(has: {', '.join(integration.actions)})")
        return
    accepted = _input_names(params_model)
    for key in action.with_:
        if key not in accepted:
            yield f"do[{index}].with.{key}", f"unknown parameter ({action.action} takes {', '.join(accepted)})"
    for key, field in accepted.items():
        if field.is_required() and key not in action.with_:
            yield f"do[{index}].with.{key}", f"missing required parameter of {action.action}"
    yield from _template_problems(action.with_, f"do[{index}].with")


def _semantic_problems(rules_file: RulesFile, registry: Mapping[str, type[Integration]]) -> Iterator[RulesProblem]:
    account = rules_file.account
    crm = rules_file.crm
    if crm is not None and crm.opt_out is not None and crm.phone_field not in crm.fields:
        yield RulesProblem(None, "crm.phone_field", f"{crm.phone_field!r} is not one of crm.fields")
    if account.alert_connection is not None and account.alert_connection not in rules_file.connections:
        yield RulesProblem(None, "account.alert_connection", f"unknown connection {account.alert_connection!r}")
    for name, spec in rules_file.connections.items():
        yield from _connection_key_problems(name, spec, registry)
    first_index: dict[str, int] = {}
    for rule_index, rule in enumerate(rules_file.rules):
        if rule.name in first_index:
            yield RulesProblem(rule.name, "name", f"duplicate rule name (rules[{first_index[rule.name]}] has it too)")
        first_index.setdefault(rule.name, rule_index)
        for pattern_index, pattern in enumerate(rule.on):
            problem = _event_type_problem(pattern)
            if problem:
                yield RulesProblem(rule.name, f"on[{pattern_index}]", problem)
        for field, message in _condition_problems(rule.if_ or {}, account):
            yield RulesProblem(rule.name, field, message)
        for action_index, action in enumerate(rule.do):
            for field, message in _action_problems(action, action_index, rules_file, registry):
                yield RulesProblem(rule.name, field, message)


def load_rules(text: str, *, filename: str, registry: Mapping[str, type[Integration]]) -> RulesFile:
    """Parse and fully validate one account's rules file; every problem is reported in one RulesError."""
    document = parse_yaml(text, filename)
    try:
        rules_file = RulesFile.model_validate(document)
    except ValidationError as exc:
        # Structure errors stop here: the checks below need the models. Pydantic reports all of them.
        raise RulesError(filename, _problems_from_pydantic(exc, document)) from None
    problems = list(_semantic_problems(rules_file, registry))
    if problems:
        raise RulesError(filename, problems)
    return rules_file


# --- Connections -------------------------------------------------------------------------------


def _reference_refusal(value: str, *, supplied_by: str, env_prefix: str | None) -> str | None:
    """Why this supplier may not use an env:/file: reference at all (None when it may)."""
    if value.startswith("env:"):
        variable = value[4:]
        if variable.upper().startswith(RESERVED_ENV_PREFIX):
            return (f"env:{variable} is refused: {RESERVED_ENV_PREFIX}* variables are the service's own settings "
                    "and keys")
        if supplied_by != OPERATOR and not (env_prefix and variable.startswith(env_prefix)):
            allowed = f" (only names starting with {env_prefix} are open to tenants)" if env_prefix else ""
            return f"env: references are the operator's alone; give the value itself{allowed}"
    elif value.startswith("file:") and supplied_by != OPERATOR:
        return "file: references are the operator's alone; give the value itself"
    return None


def _resolve_reference(name: str, key: str, value: Any, *, base_dir: Path, environ: Mapping[str, str],
                       resolve: StoredValueResolver | None, supplied_by: str = OPERATOR,
                       env_prefix: str | None = None) -> tuple[Any, str | None]:
    """(resolved value, None) or (None, why it cannot be resolved)."""
    if not isinstance(value, str):
        return value, None
    if supplied_by not in SUPPLIERS:
        raise ValueError(f"supplied_by must be one of {', '.join(SUPPLIERS)}, not {supplied_by!r}")
    refusal = _reference_refusal(value, supplied_by=supplied_by, env_prefix=env_prefix)
    if refusal:
        return None, refusal
    if value.startswith("env:"):
        variable = value[4:]
        if variable not in environ:
            return None, f"environment variable {variable} is not set"
        return environ[variable], None
    if value.startswith("file:"):
        root = base_dir.resolve()
        path = (root / value[5:]).resolve()
        # Rules may come from tenants: a file: reference must not read files outside the rules directory.
        if not path.is_relative_to(root):
            return None, f"file {value[5:]!r} is outside the rules file's directory"
        try:
            if path.stat().st_size > MAX_REFERENCED_FILE_BYTES:
                return None, f"file {value[5:]!r} is larger than {MAX_REFERENCED_FILE_BYTES // 1024} KiB"
            return path.read_text(encoding="utf-8").strip(), None
        except (OSError, UnicodeDecodeError) as exc:
            return None, f"cannot read file {value[5:]!r}: {exc.strerror if isinstance(exc, OSError) else exc}"
    if value == STORED_REFERENCE:
        stored = resolve(name, key) if resolve else None
        if stored is None:
            return None, "stored: but no value is stored for this connection"
        return stored, None
    return value, None


def validate_connection(name: str, spec: ConnectionSpec, registry: Mapping[str, type[Integration]], *,
                        resolve: StoredValueResolver | None = None, base_dir: str | Path = ".",
                        environ: Mapping[str, str] | None = None, filename: str = "connections",
                        supplied_by: str = OPERATOR, env_prefix: str | None = None,
                        allow_private_urls: bool = False) -> dict[str, Any]:
    """Resolve env:/file:/stored: references and validate with the integration's Config; RulesError if unusable.

    ``supplied_by`` (operator or tenant) decides which references may read the server; URLs are
    checked by the outbound guard, in tenant mode unless the operator's ``allow_private_urls`` is on.
    """
    problems = list(_connection_key_problems(name, spec, registry))
    if problems:
        raise RulesError(filename, problems)
    environment = os.environ if environ is None else environ
    resolved: dict[str, Any] = {}
    for key, value in spec.settings.items():
        resolved[key], problem = _resolve_reference(name, key, value, base_dir=Path(base_dir), environ=environment,
                                                    resolve=resolve, supplied_by=supplied_by, env_prefix=env_prefix)
        if problem:
            problems.append(RulesProblem(None, f"connections.{name}.{key}", problem))
    if problems:
        raise RulesError(filename, problems)
    try:
        registry[spec.integration].Config.model_validate(resolved, context={"allow_private_urls": allow_private_urls})
    except ValidationError as exc:
        # Messages only, never the input: the input holds the secrets.
        raise RulesError(filename, _problems_from_pydantic(exc, None, prefix=("connections", name))) from None
    return resolved


def resolve_crm_secret(crm: CrmSpec, *, base_dir: str | Path = ".", stored: str | None = None,
                       environ: Mapping[str, str] | None = None, filename: str = "crm",
                       supplied_by: str = OPERATOR, env_prefix: str | None = None) -> str | None:
    """The CRM signing secret with env:/file:/stored: resolved (None when the file sets none)."""
    if crm.signing_secret is None:
        return None
    value, problem = _resolve_reference("crm", "signing_secret", crm.signing_secret, base_dir=Path(base_dir),
                                        environ=os.environ if environ is None else environ,
                                        resolve=lambda _name, _key: stored, supplied_by=supplied_by,
                                        env_prefix=env_prefix)
    if problem:
        raise RulesError(filename, [RulesProblem(None, "crm.signing_secret", problem.replace("this connection",
                                                                                           "the CRM hook"))])
    return value


def _is_secret(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, (SecretStr, SecretBytes)):
        return True
    return any(_is_secret(argument) for argument in get_args(annotation))


def redact_connection(spec: ConnectionSpec, config_model: type[BaseModel]) -> dict[str, Any]:
    """The connection as exportable YAML: secret values become `stored:`; env:/file: references are kept."""
    secret_keys = {key for key, field in _input_names(config_model).items() if _is_secret(field.annotation)}
    exported: dict[str, Any] = {"integration": spec.integration}
    for key, value in spec.settings.items():
        is_reference = isinstance(value, str) and value.startswith(("env:", "file:", STORED_REFERENCE))
        exported[key] = STORED_REFERENCE if key in secret_keys and not is_reference else value
    return exported
