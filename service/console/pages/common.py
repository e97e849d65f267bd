"""What every account page shares: who is signed in, which account, the role there, and the layout's context."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import abort, g, redirect, render_template, request, url_for

from service.accounts import AccountError
from service.config import Settings
from service.console import access
from service.console.access import Principal
from service.console.errors import ConsoleError
from service.queue import TaskQueue
from service.rules import RulesError
from service.runtime import Runtime
from service.store.models import Account

log = logging.getLogger(__name__)
SWITCHER_MAX = 100  # accounts in the layout's switcher; the console's home page lists every one
# What a tenant's bad input raises in the functions pages call; each message names the field and says why.
REFUSED = (ConsoleError, AccountError, RulesError)


def signed_in() -> Principal:
    """The signed-in principal, or a redirect to the sign-in form (coming back here afterwards)."""
    if g.get("principal") is None:
        abort(redirect(url_for("console.login", next=request.full_path.rstrip("?"))))
    return g.principal


@dataclass(frozen=True)
class AccountPage:
    """The account a page is about, who is looking, with what role, and the accounts they may switch to."""

    principal: Principal
    account: Account
    role: str
    accounts: list[Account]

    def can(self, action: str) -> bool:
        """Whether the principal may do ``action`` here (pages hide the buttons it may not press)."""
        return access.ROLES.index(self.role) >= access.ROLES.index(access.ACTIONS[action])


def account_page(runtime: Runtime, account_id: str, action: str = "read") -> AccountPage:
    """Sign-in, then ``access.require`` (404 for another account, 403 for a too-low role), then the account."""
    principal = signed_in()
    role = access.require(principal, account_id, action)
    with runtime.sessions() as db:
        account = db.get(Account, account_id)
        if account is None:
            abort(404)
        reachable = access.reachable_accounts(db, principal)
        if len(reachable) > SWITCHER_MAX:  # an operator of many accounts: the home page lists them all
            others = [a for a in reachable if a.id != account.id][:SWITCHER_MAX - 1]
            reachable = sorted([*others, account], key=lambda a: (a.name, a.id))
        return AccountPage(principal, account, role, reachable)


def render(template: str, page: AccountPage, section: str, **context):
    """Render an account page with the layout's context (account switcher, navigation, role)."""
    g.account_tz = page.account.timezone  # the ``localtime`` filter shows times in the account's zone
    return render_template(template, principal=page.principal, account=page.account, role=page.role,
                           accounts=page.accounts, section=section, page=page, **context)


class ActionSender:
    """Sends run_action tasks for deliveries put back to pending (made lazily: most pages never send)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._queue: TaskQueue | None = None

    def send(self, delivery_ids: list[int]) -> None:
        """Enqueue the deliveries now; if the broker is down the scheduler sends them after their lease anyway."""
        if not delivery_ids:
            return
        try:
            if self._queue is None:
                self._queue = TaskQueue(self._settings, fail_fast=True)
            self._queue.send_actions(delivery_ids)
        except Exception:  # kombu raises many kinds; pending rows are never lost, only sent later
            log.warning("could not enqueue %d replayed action(s); the scheduler will send them", len(delivery_ids))
