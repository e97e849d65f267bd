"""Who is calling the API: an API key (``Authorization: Bearer pbx_...``) or the console's session cookie.

A session cookie travels by itself with any request the browser makes, so unsafe methods also need
the CSRF header the console pages send (``X-CSRFToken``); a Bearer key cannot be sent by a foreign page.
Read-scoped keys may only read (GET); what a principal may do in an account is ``access.require``'s call.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Request
from werkzeug.exceptions import Forbidden, Unauthorized

from service.console import access, apikeys, csrf, sessions
from service.console.access import Principal
from service.console.web import SAFE_METHODS, Cookies
from service.runtime import Runtime


class NotAuthenticated(Unauthorized):
    """No usable credentials (answered 401 with ``WWW-Authenticate: Bearer``)."""

    description = "send Authorization: Bearer <API key>, or sign in to the console"


@dataclass(frozen=True)
class Authenticator:
    """Turns a request into a Principal, or refuses it."""

    runtime: Runtime
    cookies: Cookies
    csrf_key: bytes
    idle_seconds: int

    def principal(self, request: Request) -> Principal:
        """The caller (NotAuthenticated: none or revoked; Forbidden: a read-only key writing, no CSRF header)."""
        header = request.headers.get("Authorization")
        if header:
            with self.runtime.sessions.begin() as db:  # begin: the key's last use is written
                principal = apikeys.authenticate_api_key(db, header)
            if principal is None:
                raise NotAuthenticated("the API key is unknown or revoked")
            if request.method not in SAFE_METHODS and set(principal.roles.values()) == {"viewer"}:
                raise Forbidden("this API key is read-only (scope read): it may only GET")
            return principal
        token = request.cookies.get(self.cookies.session)
        with self.runtime.sessions.begin() as db:
            found = sessions.load_session(db, token, idle_seconds=self.idle_seconds)
            principal = access.principal_for_user(db, found[1]) if found else None
        if principal is None:
            raise NotAuthenticated()
        if request.method not in SAFE_METHODS and not csrf.check(self.csrf_key, token,
                                                                 request.headers.get(csrf.HEADER)):
            raise Forbidden(f"a signed-in browser must send the {csrf.HEADER} header with every change")
        return principal
