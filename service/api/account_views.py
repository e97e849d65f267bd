"""Accounts (settings, hook URLs and health, token rotation, connecting hooks) and their connections."""

from __future__ import annotations

from flask import Response, stream_with_context
from flask_openapi3 import APIBlueprint

from service.api.base import TAGS, ApiContext, answer, dump, list_answer, principal, require
from service.api.models import (
    AccountOut,
    AccountPath,
    AccountSummary,
    CheckOut,
    ConnectionBody,
    ConnectionOut,
    ConnectionPath,
    DeleteAccountBody,
    RotateTokenBody,
    SettingsPatch,
)
from service.api.problems import PROBLEM_RESPONSE as PROBLEM
from service.console import access, connections, settings


def add_routes(bp: APIBlueprint, api: ApiContext) -> None:
    """Register the account and connection endpoints on ``bp``."""
    rt = api.runtime
    accounts_tag, connections_tag = [TAGS["accounts"]], [TAGS["connections"]]

    @bp.get("/accounts", tags=accounts_tag)
    def list_accounts():
        """The accounts the caller can see, by name, with the caller's role in each."""
        caller = principal()
        with rt.sessions() as db:
            rows = access.reachable_accounts(db, caller)
            return list_answer([AccountSummary(id=a.id, name=a.name, timezone=a.timezone,
                                               role=caller.role_in(a.id)).model_dump() for a in rows])

    @bp.get("/accounts/<account_id>", tags=accounts_tag, responses={200: AccountOut, 404: PROBLEM})
    def get_account(path: AccountPath):
        """Settings (name, time zone, retention), hooks with when each last received, paused connections.

        Hook URLs carry the hook tokens: only owners see them (``url`` is null for the others)."""
        caller = require(path.account_id, "read")
        owner = caller.role_in(path.account_id) == "owner"
        return answer(AccountOut.model_validate(settings.account_settings(rt, path.account_id, with_urls=owner)))

    @bp.patch("/accounts/<account_id>", tags=accounts_tag, responses={200: AccountOut, 422: PROBLEM})
    def update_account(path: AccountPath, body: SettingsPatch):
        """Change name, time zone or retention (``retention_days: null`` restores the service default)."""
        caller = require(path.account_id, "manage_account")
        changes = {key: getattr(body, key) for key in body.model_fields_set}
        for key in ("name", "timezone"):
            if key in changes and changes[key] is None:
                changes.pop(key)  # only retention can be unset
        found = settings.update_settings(rt, path.account_id, actor=caller.actor, **changes)
        return answer(AccountOut.model_validate(found))

    @bp.get("/accounts/<account_id>/export", tags=accounts_tag)
    def export_account(path: AccountPath):
        """Everything stored about the account, as one JSON document (credentials never included)."""
        caller = require(path.account_id, "manage_account")
        pieces = settings.export_account(rt, path.account_id, actor=caller.actor)
        return Response(stream_with_context(pieces), mimetype="application/json", headers={
            "Content-Disposition": f'attachment; filename="pbxrelay-{path.account_id}.json"'})

    @bp.delete("/accounts/<account_id>", tags=accounts_tag, responses={200: None, 422: PROBLEM})
    def delete_account(path: AccountPath, body: DeleteAccountBody):
        """Delete the account and all its data (rows, Redis keys, spooled hooks); ``confirm`` repeats its id."""
        caller = require(path.account_id, "manage_account")
        result = settings.delete_account(rt, path.account_id, confirm=body.confirm, actor=caller.actor)
        return answer({"deleted": path.account_id, "rows": result.rows, "redis_keys": result.redis_keys,
                       "spool_entries": result.spool_entries})

    @bp.post("/accounts/<account_id>/rotate-token", tags=accounts_tag)
    def rotate_token(path: AccountPath, body: RotateTokenBody):
        """A new hook URL for one endpoint; the old URL stops working at once (update VirtualPBX or the CRM)."""
        caller = require(path.account_id, "manage_account")
        url = settings.rotate_hook_token(rt, path.account_id, body.kind, actor=caller.actor)
        return answer({"kind": body.kind, "url": url})

    @bp.post("/accounts/<account_id>/connect", tags=accounts_tag)
    def connect(path: AccountPath):
        """Register the hooks the rules need with VirtualPBX (idempotent); what was created or changed."""
        caller = require(path.account_id, "manage_account")
        report = settings.connect_hooks(rt, path.account_id, actor=caller.actor)
        return answer({name: [hook.name for hook in getattr(report, name)]
                       for name in ("created", "updated", "unchanged", "deleted", "reenabled")}
                      | {"body_format": report.body_format})

    @bp.get("/accounts/<account_id>/connections", tags=connections_tag)
    def list_connections(path: AccountPath):
        """The account's connections; secrets only as set or not set."""
        require(path.account_id, "read")
        return list_answer(dump(ConnectionOut, connections.list_connections(rt, path.account_id)))

    @bp.get("/accounts/<account_id>/connections/<name>", tags=connections_tag,
            responses={200: ConnectionOut, 404: PROBLEM})
    def get_connection(path: ConnectionPath):
        """One connection."""
        require(path.account_id, "read")
        return answer(ConnectionOut.model_validate(connections.get_connection(rt, path.account_id, path.name)))

    @bp.put("/accounts/<account_id>/connections/<name>", tags=connections_tag,
            responses={200: ConnectionOut, 201: ConnectionOut, 422: PROBLEM})
    def put_connection(path: ConnectionPath, body: ConnectionBody):
        """Create or replace a connection (applied through the rules document); secrets left out are kept."""
        caller = require(path.account_id, "write_connections")
        view, created = connections.put_connection(rt, path.account_id, path.name, body.integration, body.settings,
                                                   actor=caller.actor)
        return answer(ConnectionOut.model_validate(view), 201 if created else 200)

    @bp.delete("/accounts/<account_id>/connections/<name>", tags=connections_tag,
               responses={204: None, 409: PROBLEM})
    def delete_connection(path: ConnectionPath):
        """Delete a connection no rule uses (409 names the rules that do)."""
        caller = require(path.account_id, "write_connections")
        connections.delete_connection(rt, path.account_id, path.name, actor=caller.actor)
        return "", 204

    @bp.post("/accounts/<account_id>/connections/<name>/test", tags=connections_tag, responses={200: CheckOut})
    def test_connection(path: ConnectionPath):
        """Make one harmless vendor call with the stored credentials; ``ok`` says whether it worked."""
        require(path.account_id, "write_connections")
        return answer(CheckOut.model_validate(connections.test_connection(rt, path.account_id, path.name)))

    @bp.post("/accounts/<account_id>/connections/<name>/resume", tags=connections_tag)
    def resume_connection(path: ConnectionPath):
        """Close a paused connection's circuit and replay the actions it kept."""
        caller = require(path.account_id, "write_connections")
        ids = connections.resume_connection(rt, path.account_id, path.name, actor=caller.actor)
        api.queue.send_actions(ids)
        return answer({"name": path.name, "replayed": len(ids)})
