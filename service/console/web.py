"""The console's pages (Flask blueprint under /console): sign-in, sign-out, invites; the account pages are in ``pages``.

Thin: every decision is in the console's functions; views read the form, call them, and render.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Blueprint, g, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from service.config import Settings
from service.console import access, csrf, invites, pages, sessions, users
from service.console.errors import ConsoleError
from service.console.limits import LoginLimiter
from service.console.pages import rules as rules_page
from service.console.pages.common import signed_in
from service.rules.schema import MAX_RULES_REQUEST_BYTES
from service.runtime import Runtime
from service.secrets import load_keys
from service.store.models import Account

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# The rules editor's forms, which carry a whole rules document.
RULES_FORMS = {"console.save_rules", "console.try_rules", "console.use_recipe"}


@dataclass(frozen=True)
class Cookies:
    """Cookie names and flags: Secure and the __Host- prefix (no subdomain can set it) when served over https."""

    secure: bool

    @property
    def session(self) -> str:
        """Name of the session cookie."""
        return "__Host-pbxrelay_session" if self.secure else "pbxrelay_session"

    @property
    def csrf(self) -> str:
        """Name of the pre-sign-in CSRF cookie."""
        return "__Host-pbxrelay_csrf" if self.secure else "pbxrelay_csrf"

    def set(self, response, name: str, value: str, max_age: int | None = None) -> None:
        """Set an HttpOnly, SameSite=Lax cookie (Secure over https)."""
        response.set_cookie(name, value, max_age=max_age, path="/", secure=self.secure, httponly=True,
                            samesite="Lax")


def console_blueprint(settings: Settings, runtime: Runtime) -> Blueprint:
    """The /console pages, bound to the app's settings and runtime."""
    bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates", static_folder="static")
    cookies = Cookies(secure=urlsplit(settings.public_url).scheme == "https")
    csrf_key = csrf.derive_key(load_keys(settings)[0])
    limiter = LoginLimiter(runtime.redis, namespace=settings.namespace)

    @bp.before_request
    def load_principal_and_check_csrf():
        g.principal, g.session_token, g.new_csrf_cookie = None, None, None
        with runtime.sessions.begin() as db:
            found = sessions.load_session(db, request.cookies.get(cookies.session),
                                          idle_seconds=settings.console_session_idle_seconds)
            if found is not None:
                g.session_token = request.cookies[cookies.session]
                g.principal = access.principal_for_user(db, found[1])
        if request.endpoint in RULES_FORMS:
            # The editor posts a whole rules document (multipart, so its text is not inflated by encoding),
            # as large as the API takes; every other form keeps the app's smaller limit.
            request.max_content_length = request.max_form_memory_size = MAX_RULES_REQUEST_BYTES
        if request.method not in SAFE_METHODS:
            supplied = request.form.get(csrf.FORM_FIELD) or request.headers.get(csrf.HEADER)
            if not csrf.check(csrf_key, csrf_binding(), supplied):
                return render_template("console/message.html", title="Form expired",
                                       message="This form has expired or did not come from this site. "
                                               "Go back, reload the page and try again."), 400

    def csrf_binding() -> str | None:
        # Signed in: the session itself; before: a random cookie, issued with the first form.
        return g.get("session_token") or request.cookies.get(cookies.csrf) or g.get("new_csrf_cookie")

    @bp.app_template_global("csrf_token")
    def csrf_token() -> str:
        """The CSRF token for forms and the X-CSRFToken header of this browser (issuing its cookie if needed)."""
        binding = csrf_binding()
        if binding is None:
            g.new_csrf_cookie = binding = secrets.token_urlsafe(32)
        return csrf.token_for(csrf_key, binding)

    @bp.after_request
    def headers(response):
        if g.get("new_csrf_cookie"):
            cookies.set(response, cookies.csrf, g.new_csrf_cookie)
        # The vendored script and stylesheet may be cached; every page and fragment holds account data: never.
        response.headers["Cache-Control"] = "max-age=3600" if request.endpoint == "console.static" else "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        # Invite links carry their token in the path: never let it leave in a Referer.
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = ("default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                                       "frame-ancestors 'none'; form-action 'self'")
        return response

    @bp.errorhandler(HTTPException)
    @bp.errorhandler(RequestEntityTooLarge)  # by class too: the hooks' app-wide 413 handler (JSON) would win otherwise
    def refused(exc: HTTPException):
        return render_template("console/message.html", title=exc.name, message=exc.description), exc.code

    def start_session(response, db, user) -> None:
        sessions.revoke_session(db, g.session_token)  # whoever was signed in here before is signed out
        token = sessions.create_session(db, user, absolute_seconds=settings.console_session_absolute_seconds,
                                        user_agent=request.user_agent.string, ip=request.remote_addr)
        cookies.set(response, cookies.session, token, max_age=settings.console_session_absolute_seconds)

    @bp.get("/")
    def home():
        """The accounts the signed-in user can reach."""
        principal = signed_in()
        with runtime.sessions() as db:
            reachable = access.reachable_accounts(db, principal)
        return render_template("console/home.html", principal=principal, accounts=reachable)

    @bp.route("/login", methods=["GET", "POST"])
    def login():
        """Sign in with email and password (rate limited per email and per address)."""
        next_url = request.values.get("next", "")
        if not next_url.startswith("/console/"):
            next_url = url_for("console.home")  # only ever back into the console: no open redirect
        if request.method == "GET":
            return render_template("console/login.html", next=next_url, error=None, email="")
        email, password = request.form.get("email", ""), request.form.get("password", "")
        wait = limiter.retry_after(email, request.remote_addr)
        if wait:
            error = f"Too many failed sign-ins. Try again in {max(1, (wait + 59) // 60)} minutes."
            return render_template("console/login.html", next=next_url, error=error, email=email), 429
        with runtime.sessions.begin() as db:
            user = users.authenticate(db, email, password)
            if user is None:
                limiter.record_failure(email, request.remote_addr)
                # The same words whether the email exists or not: no user enumeration.
                return render_template("console/login.html", next=next_url, email=email,
                                       error="Wrong email or password."), 401
            limiter.record_success(email)
            response = redirect(next_url)
            start_session(response, db, user)
        return response

    @bp.route("/logout", methods=["GET", "POST"])
    def logout():
        """Sign out this browser, or (``everywhere``) every session of the user."""
        if request.method == "GET":
            return render_template("console/logout.html", principal=g.principal)
        with runtime.sessions.begin() as db:
            if g.principal is not None and request.form.get("everywhere"):
                sessions.revoke_all_sessions(db, g.principal.id, actor=g.principal.actor)
            else:
                sessions.revoke_session(db, g.session_token)
        response = redirect(url_for("console.login"))
        response.delete_cookie(cookies.session, path="/", secure=cookies.secure, httponly=True, samesite="Lax")
        return response

    @bp.route("/invite/<token>", methods=["GET", "POST"])
    def invite(token: str):
        """Accept an invite: set a password (or confirm yours) and join the account."""
        with runtime.sessions.begin() as db:
            try:
                pending = invites.find_invite(db, token)
            except invites.InviteError as exc:
                return render_template("console/message.html", title="Invite", message=str(exc)), 410
            account = db.get(Account, pending.account_id)
            existing = users.find_user(db, pending.email) is not None
            view = dict(email=pending.email, role=pending.role, account=account, existing=existing)
            if request.method == "GET":
                return render_template("console/invite.html", error=None, **view)
            password = request.form.get("password", "")
            # An existing user's password is checked as a sign-in is, with its limits: the link is no way around
            # them (whoever invited, perhaps another account's owner, holds it).
            wait = limiter.retry_after(pending.email, request.remote_addr) if existing else 0
            if wait:
                error = f"Too many wrong passwords. Try again in {max(1, (wait + 59) // 60)} minutes."
                return render_template("console/invite.html", error=error, **view), 429
            if not existing and password != request.form.get("confirm", ""):
                return render_template("console/invite.html", error="The two passwords differ.", **view), 400
            try:
                user = invites.accept_invite(db, token, password)
            except invites.InviteError as exc:
                return render_template("console/message.html", title="Invite", message=str(exc)), 410
            except ConsoleError as exc:
                if existing:
                    limiter.record_failure(pending.email, request.remote_addr)
                return render_template("console/invite.html", error=str(exc), **view), 400
            if existing:
                limiter.record_success(pending.email)
            response = redirect(url_for("console.account", account_id=pending.account_id))
            start_session(response, db, user)
        return response

    pages.register(bp, settings, runtime)
    rules_page.register(bp, settings, runtime)
    return bp
