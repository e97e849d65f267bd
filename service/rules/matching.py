"""Rules at run time: which rules an event matches, and each matching action rendered with the event."""

from __future__ import annotations

import copy
import fnmatch
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping
from zoneinfo import ZoneInfo

import phonenumbers

from service.events import Event, aware
from service.rules import templating
from service.rules.schema import (
    BUSINESS_HOURS_KEY,
    GLOB_CHARS,
    PHONE_LIKE,
    PHONE_PATTERN,
    PHONE_PATTERN_SEPARATORS,
    AccountSpec,
    Rule,
    RulesFile,
    is_number,
    minutes_range,
    weekdays,
)


def _escaped(value: Any, escape: Callable[[str], str]) -> Any:
    """``value`` with ``escape`` applied to every string inside it."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {key: _escaped(item, escape) for key, item in value.items()}
    if isinstance(value, list):
        return [_escaped(item, escape) for item in value]
    return value


@dataclass(frozen=True)
class PlannedAction:
    """One action an event triggers: which rule and step, which connection, and its unrendered params."""

    rule_name: str
    index: int
    connection: str
    integration: str
    action: str
    params_template: dict[str, Any]


def lookup_path(context: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """(found, value) of a dotted path; list items are addressed by index ("legs.0.number")."""
    current: Any = context
    for segment in path.split("."):
        if isinstance(current, dict) and segment in current:
            current = current[segment]
        elif isinstance(current, list) and segment.isdigit() and int(segment) < len(current):
            current = current[int(segment)]
        else:
            return False, None
    return True, current


def _as_number(value: Any) -> float | None:
    if is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _phone_forms(text: str, region: str) -> set[str]:
    """The digits of a phone-like string and, when it is a possible number, its E.164 form."""
    if not PHONE_LIKE.match(text):
        return set()
    forms = {re.sub(r"\D", "", text)}
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return forms
    if phonenumbers.is_possible_number(number):
        forms.add(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
    return forms


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if is_number(value):
        return str(value)
    return None


def _equals(expected: Any, actual: Any, region: str) -> bool:
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, bool):
        return actual is expected or (isinstance(actual, str) and actual.casefold() == str(expected).casefold())
    if isinstance(actual, bool):
        return isinstance(expected, str) and expected.casefold() == str(actual).casefold()
    if is_number(expected):
        number = _as_number(actual)
        return number is not None and number == expected
    text = _as_text(actual)
    if text is None:
        return False
    if text.casefold() == expected.casefold():
        return True
    return bool(_phone_forms(expected, region) & _phone_forms(text, region))


def _glob_matches(pattern: str, actual: Any, region: str) -> bool:
    text = _as_text(actual)
    if text is None:
        return False
    candidates = {text, *_phone_forms(text, region)}
    patterns = {pattern}
    if PHONE_PATTERN.match(pattern):
        patterns.add(PHONE_PATTERN_SEPARATORS.sub(lambda match: match.group(1) or "", pattern))
    return any(fnmatch.fnmatchcase(candidate.casefold(), each.casefold()) for candidate in candidates
               for each in patterns)


def _value_matches(expected: Any, actual: Any, region: str) -> bool:
    """A plain condition value: a glob string or an equality."""
    if isinstance(expected, str) and GLOB_CHARS.search(expected):
        return _glob_matches(expected, actual, region)
    return _equals(expected, actual, region)


def _operator_holds(operator: str, operand: Any, actual: Any, region: str) -> bool:
    if operator == "exists":
        return operand is True  # the field is present; only exists: false fails here
    if operator == "eq":
        return _equals(operand, actual, region)
    if operator == "ne":
        return not _equals(operand, actual, region)
    if operator == "in":
        return any(_equals(option, actual, region) for option in operand)
    if operator == "not_in":
        return not any(_equals(option, actual, region) for option in operand)
    if operator == "glob":
        return _glob_matches(operand, actual, region)
    number = _as_number(actual)
    if number is None:
        return False
    comparisons = {"gt": number > operand, "gte": number >= operand, "lt": number < operand, "lte": number <= operand}
    return comparisons[operator]


def _in_business_hours(account: AccountSpec, moment: datetime) -> bool:
    local = aware(moment).astimezone(ZoneInfo(account.timezone))
    minute = local.hour * 60 + local.minute
    for day_spec, ranges in account.business_hours.items():
        if local.weekday() in weekdays(day_spec):
            if any(start <= minute < end for start, end in map(minutes_range, ranges)):
                return True
    return False


def _condition_holds(key: str, expected: Any, context: Mapping[str, Any], event: Event, account: AccountSpec) -> bool:
    if key == BUSINESS_HOURS_KEY:
        return _in_business_hours(account, event.occurred_at) is expected
    found, actual = lookup_path(context, key)
    if isinstance(expected, dict):
        if not found:
            return expected == {"exists": False}
        return all(_operator_holds(operator, operand, actual, account.region) for operator, operand in expected.items())
    if not found:
        return False
    if isinstance(expected, list):
        return any(_value_matches(option, actual, account.region) for option in expected)
    return _value_matches(expected, actual, account.region)


def matches(rule: Rule, event: Event, account: AccountSpec) -> bool:
    """Whether the event's type is in the rule's `on` and all its `if` conditions hold (`enabled` is not checked)."""
    if not any(fnmatch.fnmatchcase(event.type, pattern) for pattern in rule.on):
        return False
    context = {**event.data, "event": {"type": event.type, "key": event.key}}
    return all(_condition_holds(key, expected, context, event, account) for key, expected in (rule.if_ or {}).items())


def plan(rules_file: RulesFile, event: Event) -> list[PlannedAction]:
    """The actions the event triggers: enabled, matching rules in file order, each rule's steps in order."""
    planned = []
    for rule in rules_file.rules:
        if not rule.enabled or not matches(rule, event, rules_file.account):
            continue
        for index, action in enumerate(rule.do):
            planned.append(PlannedAction(rule_name=rule.name, index=index, connection=action.use,
                                         integration=rules_file.connections[action.use].integration,
                                         action=action.action, params_template=copy.deepcopy(action.with_)))
    return planned


def render_action(planned: PlannedAction, event: Event, account: AccountSpec,
                  escape: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Render every string in the action's params; a broken template is a PermanentError naming rule and param.

    ``escape`` (the integration's ``template_escape``) is applied to every string the event supplies,
    not to the rule's own text: a caller named ``<!channel>`` must not ping a Slack channel, while a
    rule may still write ``<@U123>`` on purpose.
    """
    context = templating.event_context(event, account_id=account.id, account_name=account.name,
                                       timezone=account.timezone)
    if escape is not None:
        context = _escaped(context, escape)
    deadline = templating.render_deadline()  # one time budget for the whole action, not one per param

    def render(value: Any, path: str) -> Any:
        if isinstance(value, str):
            try:
                return templating.render_template(value, context, timezone=account.timezone, region=account.region,
                                                  deadline=deadline)
            except templating.TemplateError as exc:
                raise templating.TemplateError(
                    f"rule {planned.rule_name!r}: do[{planned.index}].with.{path}: {exc.message}",
                    code="template") from None
        if isinstance(value, dict):
            return {key: render(item, f"{path}.{key}") for key, item in value.items()}
        if isinstance(value, list):
            return [render(item, f"{path}[{index}]") for index, item in enumerate(value)]
        return value

    return {key: render(value, key) for key, value in planned.params_template.items()}
