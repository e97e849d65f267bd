"""Settings: name, time zone and retention; hook URLs (copy, rotate, register with VirtualPBX); members and
invites; API keys; export; delete the account (typed confirmation)."""

from __future__ import annotations

from flask import Blueprint, Response, redirect, request, url_for

from integrations.base import IntegrationError
from service import accounts, tenant_data
from service.config import Settings
from service.console import apikeys, audit, members
from service.console import settings as account_settings
from service.console.errors import ConsoleError
from service.console.pages.common import REFUSED, AccountPage, account_page, render
from service.runtime import Runtime
from service.secrets import SecretsError


def retention_from_form(value: str) -> int | None:
    """Retention in days from the form (blank: the service default); ConsoleError naming the field."""
    value = value.strip()
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= 3650:
        raise ConsoleError("retention_days: a whole number of days from 1 to 3650, or blank for the default")
    return int(value)


def connect_summary(report) -> str:
    """One line saying what registering the hooks with VirtualPBX did."""
    parts = [f"{len(getattr(report, kind))} {kind}" for kind in ("created", "updated", "unchanged", "deleted",
                                                                  "reenabled")]
    return f"Hooks registered with VirtualPBX: {', '.join(parts)}; Kazoo sends {report.body_format}."


def register(bp: Blueprint, settings: Settings, runtime: Runtime) -> None:
    """The settings page and its forms."""

    def show(page: AccountPage, status: int = 200, **created):
        account_id = page.account.id
        try:
            current = account_settings.account_settings(runtime, account_id)
        except SecretsError:  # a token stored under keys this server no longer has: the page still shows
            current = None
        with runtime.sessions() as db:
            people = members.list_members(db, account_id)
            waiting = members.pending_invites(db, account_id) if page.can("manage_members") else []
            keys = apikeys.list_api_keys(db, account_id) if page.can("manage_api_keys") else []
        return render("console/pages/settings.html", page, "settings", current=current, members=people,
                      invites=waiting, keys=keys, created=created), status

    def settings_url(account_id: str, anchor: str) -> str:
        return url_for("console.settings_page", account_id=account_id) + anchor

    @bp.get("/accounts/<account_id>/settings")
    def settings_page(account_id: str):
        """The account's settings."""
        return show(account_page(runtime, account_id))

    @bp.post("/accounts/<account_id>/settings")
    def settings_save(account_id: str):
        """Change the account's name, time zone and retention (applied through the rules document)."""
        page = account_page(runtime, account_id, "manage_account")
        try:
            account_settings.update_settings(runtime, account_id, actor=page.principal.actor,
                                             name=request.form.get("name", "").strip(),
                                             timezone=request.form.get("timezone", "").strip(),
                                             retention_days=retention_from_form(request.form.get("retention_days",
                                                                                                 "")))
        except REFUSED as exc:
            return show(page, 400, error=str(exc))
        return show(account_page(runtime, account_id), notice="Settings saved.")

    @bp.post("/accounts/<account_id>/hooks/<kind>/rotate")
    def rotate_token(account_id: str, kind: str):
        """Issue a new hook token; the old URL stops working now."""
        page = account_page(runtime, account_id, "manage_account")
        try:
            account_settings.rotate_hook_token(runtime, account_id, kind, actor=page.principal.actor)
        except accounts.AccountError as exc:
            return show(page, 400, error=str(exc))
        return show(page, notice=f"New {kind} hook URL issued: the old one no longer works. "
                                 "Update wherever it was configured.")

    @bp.post("/accounts/<account_id>/hooks/connect")
    def connect_hooks(account_id: str):
        """Register (idempotently) the hooks the rules need with VirtualPBX."""
        page = account_page(runtime, account_id, "manage_account")
        try:
            report = account_settings.connect_hooks(runtime, account_id, actor=page.principal.actor)
        except (accounts.AccountError, IntegrationError) as exc:
            return show(page, 400, error=f"Registering the hooks failed: {exc}")
        return show(page, notice=connect_summary(report))

    @bp.post("/accounts/<account_id>/invites")
    def create_invite(account_id: str):
        """Invite someone to the account; the link is shown once."""
        page = account_page(runtime, account_id, "manage_members")
        try:
            with runtime.sessions.begin() as db:
                link = members.invite_member(db, account_id, request.form.get("email", ""),
                                             request.form.get("role", ""), public_url=settings.public_url,
                                             actor=page.principal.actor)
        except ConsoleError as exc:
            return show(page, 400, error=str(exc))
        return show(page, invite_url=link)

    @bp.post("/accounts/<account_id>/members/<int:user_id>")
    def change_member(account_id: str, user_id: int):
        """Change a member's role, or remove them (the last owner stays)."""
        page = account_page(runtime, account_id, "manage_members")
        try:
            with runtime.sessions.begin() as db:
                if request.form.get("remove"):
                    members.remove_member(db, account_id, user_id, actor=page.principal.actor)
                else:
                    members.change_role(db, account_id, user_id, request.form.get("role", ""),
                                        actor=page.principal.actor)
        except ConsoleError as exc:
            return show(page, 400, error=str(exc))
        return redirect(settings_url(account_id, "#members"))

    @bp.post("/accounts/<account_id>/api-keys")
    def create_api_key(account_id: str):
        """Create an API key; its secret is shown once."""
        page = account_page(runtime, account_id, "manage_api_keys")
        try:
            with runtime.sessions.begin() as db:
                new = apikeys.create_api_key(db, account_id, request.form.get("name", ""),
                                             request.form.get("scope", ""), actor=page.principal.actor)
        except ConsoleError as exc:
            return show(page, 400, error=str(exc))
        return show(page, api_key=new.secret)

    @bp.post("/accounts/<account_id>/api-keys/<int:key_id>/revoke")
    def revoke_api_key(account_id: str, key_id: int):
        """Revoke an API key."""
        page = account_page(runtime, account_id, "manage_api_keys")
        with runtime.sessions.begin() as db:
            apikeys.revoke_api_key(db, account_id, key_id, actor=page.principal.actor)
        return redirect(settings_url(account_id, "#api-keys"))

    @bp.get("/accounts/<account_id>/export")
    def export_account(account_id: str):
        """Download everything stored about the account as one JSON file (credentials masked)."""
        account_page(runtime, account_id, "manage_account")
        pieces = tenant_data.export_account(runtime, account_id)
        first = next(pieces)  # an account gone meanwhile fails here, before the download starts

        def stream():
            yield first
            yield from pieces

        return Response(stream(), mimetype="application/json", headers={
            "Content-Disposition": f'attachment; filename="pbxrelay-{account_id}.json"'})

    @bp.post("/accounts/<account_id>/delete")
    def delete_account(account_id: str):
        """Delete the account and all of its data, once its name is typed to confirm."""
        page = account_page(runtime, account_id, "manage_account")
        if request.form.get("confirm", "").strip() != page.account.name:
            return show(page, 400, error="confirm: type the account's name exactly to delete it")
        tenant_data.delete_account(runtime, account_id)
        with runtime.sessions.begin() as db:
            # Recorded with no account: the account's own audit rows went with it.
            audit.audit(db, None, "account_deleted", f"{account_id} ({page.account.name})", page.principal.actor)
        return redirect(url_for("console.home"))
