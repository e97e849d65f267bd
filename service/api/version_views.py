"""The rules' history: every applied version, the diff between two, and rolling back to one."""

from __future__ import annotations

from flask_openapi3 import APIBlueprint

from service.api.base import TAGS, ApiContext, answer, page_answer, require
from service.api.models import AccountPath, DiffQuery, PageQuery, VersionDetailOut, VersionOut, VersionPath
from service.api.problems import PROBLEM_RESPONSE as PROBLEM
from service.console import ruleversions


def add_routes(bp: APIBlueprint, api: ApiContext) -> None:
    """Register the rules-version endpoints on ``bp``."""
    rt = api.runtime
    tag = [TAGS["rules"]]

    @bp.get("/accounts/<account_id>/rules/versions", tags=tag)
    def list_versions(path: AccountPath, query: PageQuery):
        """Every applied version, newest first: number, when, by whom, supplied by operator or tenant."""
        require(path.account_id, "read")
        with rt.sessions() as db:
            return page_answer(ruleversions.list_versions(db, path.account_id, cursor=query.cursor,
                                                          limit=query.limit), VersionOut)

    @bp.get("/accounts/<account_id>/rules/versions/diff", tags=tag, responses={404: PROBLEM})
    def diff_versions(path: AccountPath, query: DiffQuery):
        """The unified diff from version ``from`` to version ``to`` (empty when they are the same)."""
        require(path.account_id, "read")
        with rt.sessions() as db:
            diff = ruleversions.diff_versions(db, path.account_id, query.from_, query.to)
        return answer({"from": query.from_, "to": query.to, "diff": diff})

    @bp.get("/accounts/<account_id>/rules/versions/<int:version>", tags=tag,
            responses={200: VersionDetailOut, 404: PROBLEM})
    def get_version(path: VersionPath):
        """One applied version with its source (secrets as ``stored:``)."""
        require(path.account_id, "read")
        with rt.sessions() as db:
            return answer(VersionDetailOut.model_validate(ruleversions.get_version(db, path.account_id,
                                                                                   path.version)))

    @bp.post("/accounts/<account_id>/rules/versions/<int:version>/rollback", tags=tag,
             responses={200: VersionOut, 404: PROBLEM, 422: PROBLEM})
    def rollback(path: VersionPath):
        """Apply an old version again, validated like any save, as a new version on top."""
        caller = require(path.account_id, "write_rules")
        new = ruleversions.rollback_by(rt, path.account_id, path.version, caller)
        return answer(VersionOut.model_validate(new))
