"""The rules page over HTTP (Flask test client; real Redis, SQLite and PostgreSQL): roles, other accounts, CSRF,
problems at their line and field, "try it" on samples and stored events, saving as the tenant, recipes, and
hostile input (templates escaping the sandbox, markup in names and rendered values)."""

from __future__ import annotations

import html
import re
from datetime import datetime, timezone

from service.console.audit import audit_entries
from service.store.models import RuleSet, StoredEvent, session_factory
from tests.service.console.conftest import ACCOUNT_A, ACCOUNT_B
from tests.service.console.test_web import console, csrf_of, signed_in  # noqa: F401  (console is a fixture)

RULES = f"""\
account: {{id: {ACCOUNT_A}, name: Acme Dental, timezone: America/New_York}}
connections:
  team-slack: {{integration: slack, bot_token: xoxb-1234-abcd}}
rules:
  - name: missed call to slack
    on: call.missed
    do:
      - use: team-slack
        action: post_message
        with: {{channel: C0123456, text: "Missed call from {{{{ caller.number }}}}"}}
"""
PAGE = f"/console/accounts/{ACCOUNT_A}/rules"


def token(client) -> str:
    """A CSRF token for the signed-in client (from a page holding a form)."""
    return csrf_of(client.get("/console/logout"))


def save(client, text: str, account: str = ACCOUNT_A, **extra):
    """POST the editor's save form."""
    return client.post(f"/console/accounts/{account}/rules", data={"text": text, "csrf_token": token(client), **extra})


def try_it(client, text: str, source: str = "sample:missed_call", *, htmx: bool = True):
    """POST the editor's text to "try it" (as htmx does unless told otherwise)."""
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(f"{PAGE}/try", data={"text": text, "source": source, "csrf_token": token(client)},
                       headers=headers)


def ruleset(console) -> RuleSet | None:  # noqa: F811  (the fixture's value, passed in)
    """Account A's applied rules row, if any."""
    with session_factory(console.settings.database_url)() as db:
        return db.get(RuleSet, ACCOUNT_A)


def text_of(response) -> str:
    """The response body as text."""
    return response.get_data(as_text=True)


def test_editor_saves_as_tenant_and_audits(console):  # noqa: F811
    """An editor's save applies the rules (version 1), redirects with a note, and audits the change with the actor."""
    client = signed_in(console, "editor@example.com")
    page = client.get(PAGE)
    assert page.status_code == 200
    assert f"id: {ACCOUNT_A}" in text_of(page) and "Save and apply" in text_of(page)
    response = save(client, RULES)
    assert response.status_code == 302 and response.headers["Location"].endswith("/rules?saved=1")
    stored = ruleset(console)
    assert stored.version == 1 and stored.supplied_by == "tenant"
    assert "xoxb-1234-abcd" not in stored.source and "stored:" in stored.source  # secrets never shown back
    shown = text_of(client.get(response.headers["Location"]))
    assert "version 1" in shown and "missed call to slack" in shown and "xoxb-1234-abcd" not in shown
    assert "  on:" in shown and "'on'" not in shown  # written for the rules' own YAML reading, as people write it
    with session_factory(console.settings.database_url)() as db:
        entry = audit_entries(db, ACCOUNT_A)[0]
    assert entry.kind == "rules_applied" and entry.actor.startswith("user:") and "version 1" in entry.detail


def test_viewer_reads_but_cannot_save_or_use_recipes(console):  # noqa: F811
    """A viewer sees the rules read-only (no save, no recipes) and gets 403 for save and recipes."""
    client = signed_in(console, "viewer@example.com")
    page = text_of(client.get(PAGE))
    assert re.search(r'<textarea id="rules-text"[^>]*readonly', page)
    assert "Save and apply" not in page and "Use this recipe" not in page
    assert save(client, RULES).status_code == 403
    assert client.post(f"{PAGE}/recipe", data={"recipe": "missed_call_slack", "text": "",
                                               "csrf_token": token(client)}).status_code == 403
    assert ruleset(console) is None
    assert try_it(client, RULES).status_code == 200  # a dry run changes nothing: viewers may try


def test_other_accounts_rules_are_404(console):  # noqa: F811
    """A member of A gets 404 for B's rules page and every form of it; an operator reaches B."""
    client = signed_in(console, "owner@example.com")
    base = f"/console/accounts/{ACCOUNT_B}/rules"
    assert client.get(base).status_code == 404
    assert save(client, RULES.replace(ACCOUNT_A, ACCOUNT_B), account=ACCOUNT_B).status_code == 404
    for path in ("/try", "/recipe"):
        assert client.post(base + path, data={"text": RULES, "source": "sample:missed_call", "recipe": "crm_sms",
                                              "csrf_token": token(client)}).status_code == 404
    assert signed_in(console, "op@example.com").get(base).status_code == 200


def test_save_without_csrf_token_is_refused(console):  # noqa: F811
    """A save without the CSRF token (a cross-site form) is refused and changes nothing."""
    client = signed_in(console, "editor@example.com")
    response = client.post(PAGE, data={"text": RULES})
    assert response.status_code == 400 and "Form expired" in text_of(response)
    assert client.post(PAGE, data={"text": RULES, "csrf_token": "0" * 64}).status_code == 400
    assert ruleset(console) is None


def test_invalid_yaml_is_shown_at_its_line(console):  # noqa: F811
    """Broken YAML: 400, nothing saved, the problem names the line and column and shows that line."""
    client = signed_in(console, "editor@example.com")
    broken = RULES.replace("    on: call.missed", "    on: [call.missed")
    response = save(client, broken)
    page = text_of(response)
    assert response.status_code == 400 and ruleset(console) is None
    assert re.search(r'data-line="(\d+)">line \1, column \d+', page)
    assert "invalid YAML" in page and "nothing was saved" in page
    assert 'class="here"' in page
    # The text is kept in the editor, so nothing typed is lost.
    assert "on: [call.missed" in page


def test_schema_problems_name_rule_field_and_line(console):  # noqa: F811
    """An unknown key and an unknown connection are each placed at their own line, with the rule and field."""
    client = signed_in(console, "editor@example.com")
    text = RULES.replace("      - use: team-slack", "      - use: team-slak")
    page = text_of(save(client, text))
    lines = text.splitlines()
    use_line = next(i for i, line in enumerate(lines, 1) if "use: team-slak" in line)
    assert f'data-line="{use_line}"' in page
    assert "missed call to slack" in page and "do[0].use" in page and "unknown connection" in page
    typo = RULES.replace("    on: call.missed", "    on: call.missed\n    iff: {direction: inbound}")
    typo_line = next(i for i, line in enumerate(typo.splitlines(), 1) if "iff:" in line)
    page = text_of(save(client, typo))
    assert f'data-line="{typo_line}"' in page and "unknown key" in page


def test_tenant_may_not_read_server_secrets(console, monkeypatch):  # noqa: F811
    """env: and file: references are the operator's: refused at the connection's line, nothing saved."""
    monkeypatch.setenv("SOME_SERVER_SECRET", "xoxb-server-secret")
    client = signed_in(console, "owner@example.com")
    for reference in ("env:SOME_SERVER_SECRET", "file:/etc/passwd"):
        page = text_of(save(client, RULES.replace("xoxb-1234-abcd", reference)))
        assert "connections.team-slack.bot_token" in page and "the operator" in page
        assert 'data-line="3"' in page and "xoxb-server-secret" not in page
    assert ruleset(console) is None


def test_rules_for_another_account_are_refused(console):  # noqa: F811
    """The text's account.id must be the page's account: B's id in A's editor is refused at account.id."""
    client = signed_in(console, "op@example.com")
    response = save(client, RULES.replace(ACCOUNT_A, ACCOUNT_B))
    assert response.status_code == 400 and "account.id" in text_of(response)
    assert 'data-line="1"' in text_of(response)
    with session_factory(console.settings.database_url)() as db:
        assert db.get(RuleSet, ACCOUNT_B) is None and db.get(RuleSet, ACCOUNT_A) is None


def test_hostile_templates_are_refused_by_the_sandbox(console):  # noqa: F811
    """A template reaching for Python internals, or one that runs away, is stopped by the template sandbox: "try it"
    shows the action's error, and nothing of Python's internals."""
    client = signed_in(console, "editor@example.com")
    escape = RULES.replace("Missed call from {{ caller.number }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    result = text_of(try_it(client, escape))
    assert "missed call to slack" in result and 'class="error"' in result
    assert "is unsafe" in result and "&lt;class" not in result and "<class" not in result
    runaway = RULES.replace("Missed call from {{ caller.number }}",
                            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}")
    result = text_of(try_it(client, runaway))
    assert "missed call to slack" in result and 'class="error"' in result
    assert "xxxxxxxxxx" not in result


def test_try_it_renders_the_unsaved_draft_on_a_sample(console):  # noqa: F811
    """"Try it" with htmx answers a fragment showing the matched rule and its rendered message; nothing is saved."""
    client = signed_in(console, "editor@example.com")
    response = try_it(client, RULES)
    fragment = text_of(response)
    assert response.status_code == 200 and "<html" not in fragment
    assert "call.missed" in fragment and "missed call to slack" in fragment
    assert "Missed call from +15555678907" in fragment or "Missed call from 15555678907" in fragment
    assert ruleset(console) is None
    nothing = try_it(client, RULES, "sample:voicemail")
    assert "No rule matched" in text_of(nothing)
    # Without JavaScript the same form answers the whole page, the draft still in the editor.
    page = text_of(try_it(client, RULES, htmx=False))
    assert "<html" in page and "missed call to slack" in page and "Missed call from" in page
    assert try_it(client, RULES, "sample:nope").status_code == 404
    assert try_it(client, RULES, "").status_code == 400


def test_try_it_on_a_stored_event_of_this_account_only(console):  # noqa: F811
    """The picker offers the account's recent events; another account's event id is 404."""
    with session_factory(console.settings.database_url).begin() as db:
        mine, theirs = (StoredEvent(account_id=account, key=f"k-{account}", type="call.missed",
                                    occurred_at=datetime(2026, 11, 2, 15, 4, tzinfo=timezone.utc),
                                    data={"caller": {"number": "+12025550123", "name": "Pat"}, "direction": "inbound"})
                        for account in (ACCOUNT_A, ACCOUNT_B))
        db.add_all([mine, theirs])
        db.flush()
        mine_id, theirs_id = mine.id, theirs.id
    client = signed_in(console, "editor@example.com")
    assert f'value="event:{mine_id}"' in text_of(client.get(PAGE))
    assert f'value="event:{theirs_id}"' not in text_of(client.get(PAGE))
    result = text_of(try_it(client, RULES, f"event:{mine_id}"))
    assert "Missed call from +12025550123" in result
    assert try_it(client, RULES, f"event:{theirs_id}").status_code == 404
    for hostile in ("event:" + "9" * 40, "event:²", "event:-1", "event:"):
        assert try_it(client, RULES, hostile).status_code == 400


def test_markup_is_escaped_everywhere(console):  # noqa: F811
    """Markup in a rule name, in rendered values and in the editor's text comes back as text, never as HTML."""
    client = signed_in(console, "editor@example.com")
    hostile = (RULES.replace("name: missed call to slack", 'name: "<script>alert(1)</script>"')
               .replace("Missed call from {{ caller.number }}", "<img src=x onerror=alert(2)>{{ caller.number }}"))
    result = text_of(try_it(client, hostile))
    assert "<script>alert(1)</script>" not in result and "&lt;script&gt;alert(1)&lt;/script&gt;" in result
    assert "<img src=x" not in result and "&lt;img src=x onerror=alert(2)&gt;" in result
    assert save(client, hostile).status_code == 302
    page = text_of(client.get(PAGE))
    assert "<script>alert(1)</script>" not in page and "<img src=x" not in page
    broken = hostile.replace("on: call.missed", "on: [</textarea><script>alert(3)</script>")
    page = text_of(save(client, broken))
    assert "</textarea><script>" not in page and "&lt;/textarea&gt;&lt;script&gt;" in page


def test_recipe_fills_the_editor_reusing_a_connection(console):  # noqa: F811
    """A recipe adds its rule to the draft, reusing the draft's Slack connection; the result validates and saves."""
    client = signed_in(console, "editor@example.com")
    response = client.post(f"{PAGE}/recipe", data={"recipe": "missed_call_slack", "text": RULES,
                                                  "csrf_token": token(client)}, headers={"HX-Request": "true"})
    fragment = text_of(response)
    assert response.status_code == 200 and '<div id="editor">' in fragment and "<html" not in fragment
    assert "missed call to slack 2" in fragment and "xoxb-your-bot-token" not in fragment
    text = re.search(r"<textarea[^>]*>(.*)</textarea>", fragment, re.S).group(1)
    assert save(client, html.unescape(text)).status_code == 302
    assert ruleset(console).source.count("use: team-slack") == 2


def test_history_diff_and_rollback(console):  # noqa: F811
    """Each save is a version; a version's page shows what changed; rolling back applies the old one as a new
    version (audited), and a rolled-back secret is still the stored one."""
    client = signed_in(console, "editor@example.com")
    assert save(client, RULES).status_code == 302
    changed = RULES.replace("Missed call from", "Call missed from")
    assert save(client, changed).status_code == 302
    page = text_of(client.get(PAGE))
    assert "version 2" in page and "version 1" in page and "Roll back to this" in page
    assert "editor@example.com" in page  # who applied each version, by name
    diff = text_of(client.get(f"{PAGE}/versions/2"))
    assert re.search(r'class="del">-\s+text: Missed call from', diff)
    assert re.search(r'class="add">\+\s+text: Call missed from', diff)
    assert "The first version" in text_of(client.get(f"{PAGE}/versions/1"))
    back = client.post(f"{PAGE}/versions/1/rollback", data={"csrf_token": token(client)})
    assert back.status_code == 302 and back.headers["Location"].endswith("saved=3&from=1")
    assert "Rolled back: version 1 is applied again as version 3" in text_of(client.get(back.headers["Location"]))
    stored = ruleset(console)
    assert stored.version == 3 and "Missed call from" in stored.source and stored.supplied_by == "tenant"
    with session_factory(console.settings.database_url)() as db:
        kinds = [(e.kind, e.actor.split(":")[0]) for e in audit_entries(db, ACCOUNT_A)]
    assert ("rules_rolled_back", "user") in kinds


def test_history_is_guarded(console):  # noqa: F811
    """Viewers see the history but cannot roll back; other accounts' versions are 404; rollback needs CSRF."""
    editor = signed_in(console, "editor@example.com")
    save(editor, RULES)
    save(editor, RULES.replace("Missed call from", "Call missed from"))
    viewer = signed_in(console, "viewer@example.com")
    assert "version 1" in text_of(viewer.get(PAGE)) and "Roll back to this" not in text_of(viewer.get(PAGE))
    assert viewer.get(f"{PAGE}/versions/1").status_code == 200
    assert viewer.post(f"{PAGE}/versions/1/rollback", data={"csrf_token": token(viewer)}).status_code == 403
    assert editor.post(f"{PAGE}/versions/1/rollback", data={}).status_code == 400  # no CSRF token
    assert editor.get(f"{PAGE}/versions/9").status_code == 404
    owner = signed_in(console, "owner@example.com")
    other = f"/console/accounts/{ACCOUNT_B}/rules/versions/1"
    assert owner.get(other).status_code == 404
    assert owner.post(f"{other}/rollback", data={"csrf_token": token(owner)}).status_code == 404
    assert ruleset(console).version == 2
    operator = signed_in(console, "op@example.com")
    assert save(operator, RULES).status_code == 302
    page = text_of(viewer.get(PAGE))
    assert "an operator" in page and "op@example.com" not in page  # staff are not named to tenants


def test_a_rules_file_as_large_as_the_api_takes_saves_from_the_editor(console):  # noqa: F811
    """The editor posts multipart (as its form says) and takes what the API takes: a 900 KB file (padded with a
    comment) is saved; a body past the rules request limit is 413, and nothing changes."""
    from service.rules.schema import MAX_RULES_REQUEST_BYTES

    client = signed_in(console, "editor@example.com")
    page = text_of(client.get(PAGE))
    assert 'enctype="multipart/form-data"' in page and 'hx-encoding="multipart/form-data"' in page
    padded = RULES + "# " + "p" * (900 * 1024) + "\n"
    data = {"text": padded, "csrf_token": token(client)}
    response = client.post(PAGE, data=data, content_type="multipart/form-data")
    assert response.status_code == 302, text_of(response)[:300]
    assert ruleset(console).version == 1
    data = {"text": "#" * MAX_RULES_REQUEST_BYTES, "csrf_token": token(client)}
    assert client.post(PAGE, data=data, content_type="multipart/form-data").status_code == 413
    assert ruleset(console).version == 1
