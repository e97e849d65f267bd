"""Members, invites and API keys of an account (owners only, except reading the member list)."""

from __future__ import annotations

from flask_openapi3 import APIBlueprint

from service.api.base import TAGS, ApiContext, answer, dump, list_answer, require
from service.api.models import (
    AccountPath,
    ApiKeyBody,
    ApiKeyOut,
    IdPath,
    InviteBody,
    InviteOut,
    MemberOut,
    NewApiKeyOut,
    RoleBody,
)
from service.api.problems import PROBLEM_RESPONSE as PROBLEM
from service.console import apikeys, members


def add_routes(bp: APIBlueprint, api: ApiContext) -> None:
    """Register the people endpoints on ``bp``."""
    rt = api.runtime
    tag = [TAGS["people"]]

    @bp.get("/accounts/<account_id>/members", tags=tag)
    def list_members(path: AccountPath):
        """The account's members and their roles."""
        require(path.account_id, "read")
        with rt.sessions() as db:
            return list_answer(dump(MemberOut, members.list_members(db, path.account_id)))

    @bp.get("/accounts/<account_id>/invites", tags=tag)
    def list_invites(path: AccountPath):
        """Invites not used yet (their links are never shown again)."""
        require(path.account_id, "manage_members")
        with rt.sessions() as db:
            rows = members.pending_invites(db, path.account_id)
        return list_answer([{"id": row.id, "email": row.email, "role": row.role,
                             "expires_at": row.expires_at.isoformat()} for row in rows])

    @bp.post("/accounts/<account_id>/invites", tags=tag, responses={201: InviteOut, 422: PROBLEM})
    def invite(path: AccountPath, body: InviteBody):
        """Invite someone by email; the invite link is in this answer only."""
        caller = require(path.account_id, "manage_members")
        with rt.sessions.begin() as db:
            url = members.invite_member(db, path.account_id, body.email, body.role, public_url=api.settings.public_url,
                                        actor=caller.actor)
        return answer(InviteOut(email=body.email.strip().lower(), role=body.role, invite_url=url), 201)

    @bp.patch("/accounts/<account_id>/members/<int:item_id>", tags=tag, responses={200: MemberOut, 404: PROBLEM})
    def change_role(path: IdPath, body: RoleBody):
        """Give a member another role (the last owner stays owner)."""
        caller = require(path.account_id, "manage_members")
        with rt.sessions.begin() as db:
            member = members.change_role(db, path.account_id, path.item_id, body.role, actor=caller.actor)
        return answer(MemberOut.model_validate(member))

    @bp.delete("/accounts/<account_id>/members/<int:item_id>", tags=tag, responses={204: None, 404: PROBLEM})
    def remove_member(path: IdPath):
        """Take a member out of the account."""
        caller = require(path.account_id, "manage_members")
        with rt.sessions.begin() as db:
            members.remove_member(db, path.account_id, path.item_id, actor=caller.actor)
        return "", 204

    @bp.get("/accounts/<account_id>/api-keys", tags=tag)
    def list_api_keys(path: AccountPath):
        """The account's API keys, revoked ones included (their secrets are never shown again)."""
        require(path.account_id, "manage_api_keys")
        with rt.sessions() as db:
            return list_answer(dump(ApiKeyOut, apikeys.list_api_keys(db, path.account_id)))

    @bp.post("/accounts/<account_id>/api-keys", tags=tag, responses={201: NewApiKeyOut, 422: PROBLEM})
    def create_api_key(path: AccountPath, body: ApiKeyBody):
        """A new key (scope read: GET only; write: changes too); ``token`` is in this answer only."""
        caller = require(path.account_id, "manage_api_keys")
        with rt.sessions.begin() as db:
            new = apikeys.create_api_key(db, path.account_id, body.name, body.scope, actor=caller.actor)
            out = NewApiKeyOut.model_validate({**ApiKeyOut.model_validate(new.key).model_dump(), "token": new.secret})
        return answer(out, 201)

    @bp.delete("/accounts/<account_id>/api-keys/<int:item_id>", tags=tag, responses={204: None, 404: PROBLEM})
    def revoke_api_key(path: IdPath):
        """Revoke a key: it stops working at once."""
        caller = require(path.account_id, "manage_api_keys")
        with rt.sessions.begin() as db:
            apikeys.revoke_api_key(db, path.account_id, path.item_id, actor=caller.actor)
        return "", 204
