"""The console's errors: bad input (ConsoleError), and the two refusals of ``require`` (404 and 403)."""

from __future__ import annotations

from werkzeug import exceptions


class ConsoleError(ValueError):
    """A console request that cannot be carried out; the message names the field and says why."""


class NotFound(exceptions.NotFound):
    """No such object for this principal: also what another account's objects look like (never 403)."""


class Forbidden(exceptions.Forbidden):
    """The principal may see the account but its role does not allow this action."""
