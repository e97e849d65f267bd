"""The rules document: read it (YAML or JSON), validate, dry-run, and apply it atomically as the tenant's."""

from __future__ import annotations

from typing import Any

import yaml
from flask import Response, request
from flask_openapi3 import APIBlueprint

from service import accounts
from service.api.base import TAGS, ApiContext, answer, require
from service.api.models import AccountPath, DryRunBody, RulesQuery
from service.api.problems import PROBLEM_RESPONSE as PROBLEM
from service.console.errors import ConsoleError, NotFound
from service.console.settings import apply_tenant_rules
from service.engine import dryrun
from service.pbx.payloads import MalformedPayload
from service.store import queries
from service.store.models import RuleSet

YAML_TYPES = ("text/yaml", "application/yaml", "application/x-yaml")
# The request body of PUT and validate, for the OpenAPI document (the views read it raw).
RULES_BODY = {"requestBody": {"required": True, "content": {
    "text/yaml": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "object", "description": "the rules document as JSON"}}}}}


def rules_text() -> str:
    """The rules document of the request: YAML text, or a JSON object turned into YAML."""
    if request.mimetype in YAML_TYPES:
        try:
            return request.get_data().decode("utf-8")
        except UnicodeDecodeError:
            raise ConsoleError("body: the YAML document is not UTF-8") from None
    if request.mimetype == "application/json":
        document = request.get_json(silent=True)
        if not isinstance(document, dict):
            raise ConsoleError("body: the JSON body must be an object: the rules document")
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    raise ConsoleError(f"body: send the rules as text/yaml or application/json (got {request.mimetype or 'none'!r})")


def add_routes(bp: APIBlueprint, api: ApiContext) -> None:
    """Register the rules endpoints on ``bp``."""
    rt = api.runtime
    tag = [TAGS["rules"]]

    @bp.get("/accounts/<account_id>/rules", tags=tag, responses={404: PROBLEM})
    def get_rules(path: AccountPath, query: RulesQuery):
        """The applied rules, secrets as ``stored:``: YAML when asked (Accept: text/yaml), else JSON."""
        require(path.account_id, "read")
        with rt.sessions() as db:
            ruleset = db.get(RuleSet, path.account_id)
            if ruleset is None:
                raise NotFound("the account has no rules yet")
            text = accounts.export_rules(db, path.account_id)
            meta: dict[str, Any] = {"version": ruleset.version, "supplied_by": ruleset.supplied_by,
                                    "applied_at": ruleset.applied_at.isoformat()}
        wanted = query.format or ("yaml" if request.accept_mimetypes.best_match(
            ["application/json", *YAML_TYPES]) in YAML_TYPES else "json")
        if wanted == "yaml":
            return Response(text, mimetype="text/yaml", headers={"X-Rules-Version": str(meta["version"])})
        return answer({**meta, "document": yaml.safe_load(text)})

    @bp.put("/accounts/<account_id>/rules", tags=tag, responses={422: PROBLEM}, openapi_extensions=RULES_BODY)
    def put_rules(path: AccountPath):
        """Apply a whole rules document (YAML or JSON) atomically: all of it is valid, or nothing changes."""
        caller = require(path.account_id, "write_rules")
        text = rules_text()
        with rt.sessions.begin() as db:
            ruleset = apply_tenant_rules(db, rt, path.account_id, text, actor=caller.actor)
            version = ruleset.version
        return answer({"version": version})

    @bp.post("/accounts/<account_id>/rules/validate", tags=tag, responses={422: PROBLEM},
             openapi_extensions=RULES_BODY)
    def validate_rules(path: AccountPath):
        """Check a rules document exactly as applying would (connections included), and change nothing."""
        caller = require(path.account_id, "read")
        text = rules_text()
        with rt.sessions() as db:
            try:
                version = apply_tenant_rules(db, rt, path.account_id, text, actor=caller.actor).version
            finally:
                db.rollback()
        return answer({"valid": True, "would_be_version": version})

    @bp.post("/accounts/<account_id>/rules/dry-run", tags=tag, responses={422: PROBLEM})
    def dry_run(path: AccountPath, body: DryRunBody):
        """What a stored hook event (``event_key``) or hook payloads would do under the applied rules; no effects."""
        require(path.account_id, "read")
        if (body.event_key is None) == (body.payloads is None):
            raise ConsoleError("body: give either event_key or payloads")
        payloads = body.payloads
        if body.event_key is not None:
            with rt.sessions() as db:
                event = queries.stored_event(db, path.account_id, body.event_key)
                if event is None:
                    raise NotFound("no such event")
                if not event.type.startswith("virtualpbx."):
                    raise ConsoleError(f"event_key: {event.type} is derived from hooks; dry-run one of its "
                                       "virtualpbx.* events, or send the payloads")
                payloads = [event.data]
        try:
            return answer(dryrun.dry_run(rt, path.account_id, payloads))
        except MalformedPayload as exc:
            raise ConsoleError(f"payloads: {exc}") from None
