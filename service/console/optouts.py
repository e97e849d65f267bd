"""An account's SMS opt-out list for the console and the API: list, add, remove, each change audited.

Numbers are stored in E.164, as STOP replies and CRM flags store them, so one list serves all three.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import crm
from service.console.audit import audit
from service.console.errors import ConsoleError, NotFound
from service.console.history import Page, keyset_page
from service.engine.planning import ruleset_of
from service.runtime import Runtime
from service.store.models import OptOut

SOURCE = "console"


def _region(session: Session, rt: Runtime, account_id: str) -> str:
    ruleset = ruleset_of(session, rt, account_id)
    return ruleset.account.region if ruleset is not None else "US"


def normalize(session: Session, rt: Runtime, account_id: str, number: str) -> str:
    """The E.164 form of ``number`` in the account's phone region, or a ConsoleError naming the field."""
    e164 = crm.to_e164(number, _region(session, rt, account_id)) if isinstance(number, str) and len(number) <= 40 \
        else None
    if e164 is None:
        raise ConsoleError(f"number: {str(number)[:40]!r} is not a phone number")
    return e164


def list_opt_outs(session: Session, account_id: str, *, cursor: str | None = None, limit: int = 50) -> Page:
    """A page of the account's opt-outs, newest first."""
    return keyset_page(session, sa.select(OptOut).where(OptOut.account_id == account_id), OptOut.id, cursor, limit)


def add_opt_out(session: Session, rt: Runtime, account_id: str, number: str, *, actor: str) -> tuple[str, bool]:
    """Stop texting ``number``; (its E.164 form, whether it was added now rather than already there)."""
    e164 = normalize(session, rt, account_id, number)
    added = crm.add_opt_out(session, account_id, e164, SOURCE)
    if added:
        audit(session, account_id, "opt_out_added", e164, actor)
    return e164, added


def remove_opt_out(session: Session, rt: Runtime, account_id: str, number: str, *, actor: str) -> str:
    """Allow texting ``number`` again (NotFound when it is not on the list); its E.164 form."""
    e164 = normalize(session, rt, account_id, number)
    if not crm.remove_opt_out(session, account_id, e164):
        raise NotFound("number is not on the opt-out list")
    audit(session, account_id, "opt_out_removed", e164, actor)
    return e164
