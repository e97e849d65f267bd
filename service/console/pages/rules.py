"""Rules: edit the account's rules file (problems shown at their line and field), try the draft on a sample hook
or a stored event without saving, save it (applied atomically as the tenant's), start from a recipe, and see the
history of applied versions with their diffs and roll back to one.

Views are thin: the logic is in ``service.console.rules_editor``. Every form works without JavaScript; with
htmx, "try it" and recipes answer with a fragment instead of the whole page.
"""

from __future__ import annotations

from flask import Blueprint, abort, redirect, request, url_for

from service import accounts
from service import rules as rules_mod
from service.config import Settings
from service.console import rules_editor, ruleversions
from service.console.errors import NotFound
from service.console.pages.common import AccountPage, account_page, render
from service.runtime import Runtime

TEMPLATE = "console/pages/rules.html"
HISTORY_SHOWN = 20


def register(bp: Blueprint, settings: Settings, runtime: Runtime) -> None:
    """The rules page and its forms."""

    def is_htmx() -> bool:
        return request.headers.get("HX-Request") == "true"

    def posted_text() -> str:
        return request.form.get("text", "")

    def full_page(page: AccountPage, text: str, *, status: int = 200, **context):
        with runtime.sessions() as db:
            events = [(row.id, rules_editor.event_label(row))
                      for row in rules_editor.recent_events(db, page.account.id)]
            versions = ruleversions.list_versions(db, page.account.id, limit=HISTORY_SHOWN).items
            actors = rules_editor.actor_labels(db, [v.actor for v in versions])
        context.setdefault("problems", [])
        return render(TEMPLATE, page, "rules", text=text, lines=text.splitlines(), events=events,
                      samples=rules_editor.samples(), recipes=rules_editor.recipes(), versions=versions, actors=actors,
                      saved=request.args.get("saved", type=int), rolled_back=request.args.get("from", type=int),
                      **context), status

    @bp.get("/accounts/<account_id>/rules")
    def rules_page(account_id: str):
        """The editor holding the applied rules, the try-it panel and the recipes."""
        page = account_page(runtime, account_id)
        with runtime.sessions() as db:
            text = rules_editor.draft_text(db, account_id)
        return full_page(page, text)

    @bp.post("/accounts/<account_id>/rules")
    def save_rules(account_id: str):
        """Apply the edited rules atomically; on any problem nothing changes and the problems are shown."""
        page = account_page(runtime, account_id, "write_rules")
        text = posted_text()
        problems = rules_editor.check_draft(runtime, account_id, text)
        if not problems:
            try:
                ruleset = rules_editor.save_draft(runtime, account_id, text, actor=page.principal.actor)
            except (rules_mod.RulesError, accounts.AccountError) as exc:
                problems = rules_editor.problems_of(exc, text)
            else:
                return redirect(url_for("console.rules_page", account_id=account_id, saved=ruleset.version))
        return full_page(page, text, status=400, problems=problems)

    @bp.post("/accounts/<account_id>/rules/try")
    def try_rules(account_id: str):
        """Dry run the unsaved draft on a sample hook or a stored event: what would match and what it would send."""
        page = account_page(runtime, account_id)
        text = posted_text()
        kind, _, value = request.form.get("source", "").partition(":")
        problems, result = rules_editor.check_draft(runtime, account_id, text), None
        if not problems:
            if kind == "event" and value.isascii() and value.isdigit() and len(value) <= 18:  # fits a BIGINT
                result = rules_editor.try_draft(runtime, account_id, text, event_id=int(value))
            elif kind == "sample":
                result = rules_editor.try_draft(runtime, account_id, text, sample=value)
            else:
                abort(400, "Choose a sample hook or a stored event to try the rules on.")
        if is_htmx():
            return render("console/pages/rules_try.html", page, "rules", problems=problems, result=result,
                          text=text, lines=text.splitlines())
        return full_page(page, text, problems=problems, result=result)

    @bp.post("/accounts/<account_id>/rules/recipe")
    def use_recipe(account_id: str):
        """Add a recipe's rules (and its connection, unless one of that kind exists) to the draft."""
        page = account_page(runtime, account_id, "write_rules")
        text = rules_editor.fill_recipe(posted_text(), request.form.get("recipe", ""), account=page.account)
        if is_htmx():
            return render("console/pages/rules_editor.html", page, "rules", text=text, problems=[], lines=[])
        return full_page(page, text)

    @bp.get("/accounts/<account_id>/rules/versions/<int:version>")
    def rules_version(account_id: str, version: int):
        """One applied version: its text, and what changed from another version (the one before, by default)."""
        page = account_page(runtime, account_id)
        against = request.args.get("against", type=int) or version - 1
        with runtime.sessions() as db:
            shown = ruleversions.get_version(db, account_id, version)
            try:
                diff = ruleversions.diff_versions(db, account_id, against, version)
            except NotFound:  # the first version: nothing before it
                against, diff = None, None
            newest = ruleversions.list_versions(db, account_id, limit=1).items[0].version
            actor = rules_editor.actor_labels(db, [shown.actor])[shown.actor]
        return render("console/pages/rules_version.html", page, "rules", shown=shown, against=against, diff=diff,
                      newest=newest, actor=actor)

    @bp.post("/accounts/<account_id>/rules/versions/<int:version>/rollback")
    def rules_rollback(account_id: str, version: int):
        """Apply an old version again, as a new version on top (validated like any save; audited)."""
        page = account_page(runtime, account_id, "write_rules")
        try:
            new = ruleversions.rollback_by(runtime, account_id, version, page.principal)
        except (rules_mod.RulesError, accounts.AccountError) as exc:
            with runtime.sessions() as db:
                text = ruleversions.get_version(db, account_id, version).source
            return full_page(page, text, status=400, problems=rules_editor.problems_of(exc, text))
        return redirect(url_for("console.rules_page", account_id=account_id, saved=new.version, **{"from": version}))
