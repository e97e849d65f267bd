"""The ``pbxrelay`` command line: one module per command group, all registered on ``main``."""

from service.cli import accounts, deliveries, dev, processes, rules, secrets, users  # noqa: F401  (they register commands)
from service.cli.base import main

__all__ = ["main"]
