"""Hook endpoints: Kazoo webhooks and CRM webhooks, authenticated by token, queued raw, answered 200.

Kazoo never retries a non-200 and disables a hook after more than 6 failures in 60 s, so every
authenticated request that fits gets exactly 200; only an unknown token (404), an oversized body
(413), a bad or missing CRM signature (401) or a full spool with Redis away (503) get anything else.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from service.web.receiver import current_receiver, make_envelope, read_body
from service.web.signing import SignatureError, verify
from service.web.spool import SpoolFull

log = logging.getLogger(__name__)
blueprint = Blueprint("hooks", __name__)


@blueprint.route("/hooks/virtualpbx/<token>", methods=["GET", "POST"])
def virtualpbx_hook(token: str):
    """Kazoo webhook deliveries (GET query, form POST or JSON POST)."""
    return _receive("virtualpbx", token)


@blueprint.post("/hooks/crm/<token>")
def crm_hook(token: str):
    """CRM webhooks (JSON or form), signed with Standard Webhooks headers unless the rules say signing: none."""
    return _receive("crm", token)


@blueprint.app_errorhandler(RequestEntityTooLarge)
def too_large(_exc):
    """A body over max_body_bytes (Flask's MAX_CONTENT_LENGTH) gets 413 with the limit."""
    return _too_large()


def _too_large():
    return jsonify(error=f"body larger than {current_receiver().settings.max_body_bytes} bytes"), 413


def _receive(kind: str, token: str):
    """Authenticate, size-check, verify a CRM signature, then queue or spool the raw request."""
    receiver = current_receiver()
    started = time.perf_counter()
    cached = receiver.cached(kind, token)  # its epoch is checked with the push, below
    found = cached[0] if cached else receiver.account_for(kind, token)
    if found is None:
        receiver.rejected.labels("unknown_token").inc()
        return jsonify(error="unknown hook token"), 404
    account_id = found.account_id
    crm_secret = (receiver.runtime.box.decrypt(found.crm_secret_encrypted)["secret"]
                  if kind == "crm" and found.crm_secret_encrypted else None)
    body = read_body(request.environ, receiver.settings.max_body_bytes)
    if body is None or len(request.query_string) > receiver.settings.max_body_bytes:
        receiver.rejected.labels("too_large").inc()
        return _too_large()
    if kind == "crm" and crm_secret:
        try:
            verify(crm_secret, {k.lower(): v for k, v in request.headers.items()}, body)
        except SignatureError as exc:
            receiver.rejected.labels("bad_signature").inc()
            return jsonify(error=f"signature check failed: {exc}"), 401
    elif kind == "crm" and not found.crm_unsigned:
        receiver.rejected.labels("unsigned").inc()
        return jsonify(error="unsigned CRM hooks are refused: set crm.signing_secret in the account's rules "
                             "file (or crm.signing: none to accept them unsigned)"), 401
    headers = {name.lower(): request.headers[name][:200]
               for name in ("X-Hook-ID", "X-Account-ID", "webhook-id") if name in request.headers}
    envelope = make_envelope(source=kind, account_id=account_id, method=request.method,
                             content_type=request.headers.get("Content-Type", ""),
                             query_string=request.query_string.decode("latin-1"), body=body, headers=headers)
    try:
        where = receiver.accept(envelope, epoch=cached[1]) if cached else receiver.accept(envelope)
        if where is None:  # a rotation changed the token epoch since it was cached (or Redis is away): look it up
            receiver.forget(token)
            if receiver.account_for(kind, token) is None:
                receiver.rejected.labels("unknown_token").inc()
                return jsonify(error="unknown hook token"), 404
            where = receiver.accept(envelope)
    except SpoolFull:
        receiver.rejected.labels("spool_full").inc()
        log.error("ALARM: spool full and queue unreachable; refusing a %s delivery for %s", kind, account_id)
        return jsonify(error="temporarily unable to keep events"), 503
    receiver.received.labels(kind, where).inc()
    receiver.latency.observe(time.perf_counter() - started)
    return jsonify(status="ok"), 200
