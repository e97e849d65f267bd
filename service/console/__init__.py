"""The console's people and access: users and roles, passwords, sessions, CSRF, invites, API keys, audit.

Plain functions on a SQLAlchemy session (and Redis for login limits); the Flask pages are in
``service.console.web``. Authorization is one function, ``access.require(principal, account_id, action)``.
"""
