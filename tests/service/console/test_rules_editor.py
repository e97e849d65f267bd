"""The rules page's plain functions: recipes against the real schema, filling a draft, placing problems."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from integrations import REGISTRY
from service import rules as rules_mod
from service.accounts import AccountError
from service.console import rules_editor
from service.console.errors import NotFound

ACCOUNT = SimpleNamespace(id="c" * 32, name="Cobalt Clinic", timezone="Europe/Paris")


def test_there_are_the_four_recipes():
    """The gallery holds the recipes the issue asks for, each with a title and a description."""
    found = rules_editor.recipes()
    assert list(found) == ["missed_call_slack", "voicemail_trello", "call_log_sheets", "crm_sms"]
    assert {p.stem for p in rules_editor.RECIPES_DIR.glob("*.yaml")} == set(found)  # no recipe file left out
    assert all(recipe.title != recipe.key and recipe.about for recipe in found.values())


@pytest.mark.parametrize("key", sorted(rules_editor.recipes()))
def test_each_recipe_is_a_valid_rules_file(key):
    """Each recipe file passes the real rules schema as it is, and once filled into an empty draft."""
    recipe = rules_editor.recipes()[key]
    rules_mod.load_rules(recipe.text, filename=key, registry=REGISTRY)
    filled = rules_editor.fill_recipe("", key, account=ACCOUNT)
    parsed = rules_mod.load_rules(filled, filename=key, registry=REGISTRY)
    assert parsed.account.id == ACCOUNT.id and parsed.account.timezone == "Europe/Paris"
    assert parsed.rules and all(action.use in parsed.connections for rule in parsed.rules for action in rule.do)


def test_recipes_add_up_without_clashes():
    """Two recipes of the same kind reuse one connection and get distinct rule names; other kinds add theirs."""
    draft = rules_editor.fill_recipe("", "missed_call_slack", account=ACCOUNT)
    draft = rules_editor.fill_recipe(draft, "missed_call_slack", account=ACCOUNT)
    draft = rules_editor.fill_recipe(draft, "voicemail_trello", account=ACCOUNT)
    parsed = rules_mod.load_rules(draft, filename="x", registry=REGISTRY)
    assert [r.name for r in parsed.rules] == ["missed call to slack", "missed call to slack 2", "voicemail card"]
    assert sorted(parsed.connections) == ["board", "team-slack"]
    assert "on: call.missed" in draft  # dumped for the rules' loader: `on` stays a plain key
    with pytest.raises(NotFound):
        rules_editor.fill_recipe(draft, "../../etc/passwd", account=ACCOUNT)


def test_locate_follows_rules_fields_and_dotted_condition_keys():
    """Fields are found relative to the named rule, through list items and keys that hold dots."""
    text = ("account: {id: x}\nrules:\n  - name: first\n    on: call.missed\n  - name: second\n"
            "    if:\n      caller.number: '+1*'\n    do:\n      - use: a\n        with: {text: hi}\n")
    assert rules_editor.locate(text, "second", "if.caller.number") == (7, 7)
    assert rules_editor.locate(text, "second", "do[0].with.text") == (10, 16)
    assert rules_editor.locate(text, None, "rules[0].on") == (4, 5)
    # A missing key points at the deepest part that exists; an unknown rule or broken YAML at nothing.
    assert rules_editor.locate(text, "first", "do") == (3, 5)
    assert rules_editor.locate(text, "third", "on") == (None, None)
    assert rules_editor.locate("a: [", None, "a") == (None, None)


def test_problems_of_apply_errors_are_placed_too():
    """Errors apply_rules reports as text (connections, account) are split into rule, field and line."""
    text = "account: {id: x}\nconnections:\n  s: {integration: slack, bot_token: env:HOME}\n"
    error = AccountError("rules.yaml: connections.s.bot_token: env: references are the operator's alone\n"
                         "<rules version 4>: rule 'r one': do[0].use: unknown connection")
    first, second = rules_editor.problems_of(error, text)
    assert (first.line, first.field, first.rule) == (3, "connections.s.bot_token", None)
    assert first.message == "env: references are the operator's alone"
    assert (second.rule, second.field, second.line) == ("r one", "do[0].use", None)
