"""RFC 9457 problem details: every API error is ``application/problem+json`` naming the field when there is one."""

from __future__ import annotations

import logging
import re

from flask import Response, json
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import HTTPException

from service.accounts import AccountError
from service.console.connections import ConnectionInUse
from service.console.errors import ConsoleError
from service.rules import RulesError

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "urn:pbxrelay:problem:"
# "field: message", as ConsoleError and the rules' problems word them.
_FIELD_FIRST = re.compile(r"^(?P<field>[A-Za-z_][\w.\[\]-]*): (?P<message>.+)$", re.S)
_LINE = re.compile(r"at line (\d+)")


class FieldProblem(BaseModel):
    """One thing wrong with the request: where (a dotted field path) and what."""

    field: str
    message: str
    line: int | None = Field(default=None, description="the line of the YAML document, when known")


class Problem(BaseModel):
    """An error (RFC 9457 problem details); ``errors`` names each field that is wrong."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldProblem] = Field(default_factory=list)


# How the OpenAPI document describes an error answer.
PROBLEM_RESPONSE = {"description": "a problem (RFC 9457)",
                    "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def problem(status: int, title: str, detail: str | None = None, *, kind: str | None = None,
            errors: list[FieldProblem] | None = None, headers: dict[str, str] | None = None) -> Response:
    """A problem+json response."""
    body = Problem(type=TYPE_BASE + kind if kind else "about:blank", title=title, status=status, detail=detail,
                   errors=errors or [])
    response = Response(json.dumps(body.model_dump(exclude_none=True)), status=status, mimetype=MEDIA_TYPE)
    response.headers.update(headers or {})
    return response


def _location(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "body"


def validation_problem(exc: ValidationError) -> Response:
    """flask-openapi3's validation_error_callback: every pydantic error as a field problem (never the input)."""
    errors = [FieldProblem(field=_location(error["loc"]), message=error["msg"]) for error in exc.errors()]
    return problem(422, "Invalid request", f"{len(errors)} problem(s) with the request", kind="validation",
                   errors=errors)


def _line_problem(field: str, message: str) -> FieldProblem:
    match = _LINE.search(message)
    return FieldProblem(field=field or "body", message=message, line=int(match.group(1)) if match else None)


def rules_problem(exc: RulesError) -> Response:
    """The rules' problems, each with its rule-qualified field (and YAML line when the parser gave one)."""
    errors = []
    for item in exc.problems:
        field = f"rules[{item.rule}].{item.field}" if item.rule is not None and item.field else item.field
        errors.append(_line_problem(field, item.message))
    return problem(422, "Invalid rules", str(exc), kind="invalid-rules", errors=errors)


def _split(line: str) -> FieldProblem:
    match = _FIELD_FIRST.match(line)
    return FieldProblem(field=match["field"], message=match["message"]) if match else _line_problem("", line)


def account_problem(exc: AccountError) -> Response:
    """AccountError lines are ``file: field: message``: one field problem per line."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    about_rules = any(line.startswith(("rules.yaml: ", "<rules version")) for line in lines)
    errors = [_split(line.split(": ", 1)[1] if line.startswith(("rules.yaml: ", "<rules version")) else line)
              for line in lines]
    if about_rules:
        return problem(422, "Invalid rules", str(exc), kind="invalid-rules", errors=errors)
    return problem(422, "Cannot be done", str(exc), kind="unprocessable", errors=errors)


def to_problem(exc: Exception) -> Response:
    """The problem response for any exception a view lets escape."""
    if isinstance(exc, HTTPException):
        if exc.response is not None:  # abort(response): already an answer (validation errors)
            return exc.response
        headers = {"Allow": ", ".join(exc.valid_methods)} if getattr(exc, "valid_methods", None) else None
        return problem(exc.code or 500, exc.name, exc.description, headers=headers)
    if isinstance(exc, RecursionError):  # json.loads of a body like [[[[...]]]]: too deep for the parser
        found = FieldProblem(field="body", message="the JSON body is nested too deeply")
        return problem(422, "Invalid request", found.message, kind="validation", errors=[found])
    if isinstance(exc, IntegrityError):  # e.g. two saves of the rules at once: both took the same version number
        return problem(409, "Conflict", "something changed the account at the same time; reload and try again",
                       kind="conflict")
    if isinstance(exc, ConnectionInUse):
        return problem(409, "Conflict", str(exc).split(": ", 1)[-1], kind="conflict", errors=[_split(str(exc))])
    if isinstance(exc, ConsoleError):
        found = _split(str(exc))
        return problem(422, "Invalid request", found.message, kind="validation", errors=[found])
    if isinstance(exc, RulesError):
        return rules_problem(exc)
    if isinstance(exc, AccountError):
        return account_problem(exc)
    log.exception("unexpected error in the API")
    return problem(500, "Internal Server Error", "something went wrong on our side; it has been logged")
