"""Settings: hook URLs, members and invites, API keys (and the account's tokens, retention, export, deletion)."""

from __future__ import annotations

from flask import Blueprint, redirect, request, url_for

from service import accounts
from service.config import Settings
from service.console import apikeys, invites, users
from service.console.errors import ConsoleError
from service.console.pages.common import AccountPage, account_page, render
from service.runtime import Runtime
from service.secrets import SecretsError


def hook_urls(runtime: Runtime, settings: Settings, account) -> dict[str, tuple[str | None, str | None]]:
    """The account's VirtualPBX and CRM hook URLs, each as (url, None) or (None, why there is none)."""
    urls: dict[str, tuple[str | None, str | None]] = {}
    for kind in ("virtualpbx", "crm"):
        try:
            token = accounts.hook_token(account, runtime.box, kind)
            urls[kind] = (accounts.hook_url(settings.public_url, token, kind), None)
        except accounts.AccountError:
            urls[kind] = (None, "No token stored yet: rotate to issue one.")
        except SecretsError:
            urls[kind] = (None, "The stored token cannot be decrypted with the configured keys: rotate it.")
    return urls


def register(bp: Blueprint, settings: Settings, runtime: Runtime) -> None:
    """The settings page and its forms."""

    def show(page: AccountPage, status: int = 200, **created):
        with runtime.sessions() as db:
            members = users.members(db, page.account.id)
            keys = apikeys.list_api_keys(db, page.account.id) if page.can("manage_api_keys") else []
        urls = hook_urls(runtime, settings, page.account) if page.can("manage_account") else {}
        return render("console/pages/settings.html", page, "settings", members=members, keys=keys,
                      hook_urls=urls, created=created), status

    @bp.get("/accounts/<account_id>/settings")
    def settings_page(account_id: str):
        """The account's settings."""
        return show(account_page(runtime, account_id))

    @bp.post("/accounts/<account_id>/invites")
    def create_invite(account_id: str):
        """Invite someone to the account; the link is shown once."""
        page = account_page(runtime, account_id, "manage_members")
        try:
            with runtime.sessions.begin() as db:
                token = invites.create_invite(db, account_id, request.form.get("email", ""),
                                              request.form.get("role", ""), actor=page.principal.actor)
        except ConsoleError as exc:
            return show(page, 400, error=str(exc))
        return show(page, invite_url=invites.invite_url(settings.public_url, token))

    @bp.post("/accounts/<account_id>/members/<int:user_id>")
    def change_member(account_id: str, user_id: int):
        """Change a member's role, or remove them (the last owner stays)."""
        page = account_page(runtime, account_id, "manage_members")
        try:
            with runtime.sessions.begin() as db:
                member = next((user for user, _ in users.members(db, account_id) if user.id == user_id), None)
                if member is None:
                    return show(page, 404, error="member: no such member of this account")
                if request.form.get("remove"):
                    users.remove_member(db, account_id, user_id, actor=page.principal.actor)
                else:
                    users.set_role(db, account_id, member, request.form.get("role", ""), actor=page.principal.actor)
        except ConsoleError as exc:
            return show(page, 400, error=str(exc))
        return redirect(url_for("console.settings_page", account_id=account_id) + "#members")

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
        return redirect(url_for("console.settings_page", account_id=account_id) + "#api-keys")
