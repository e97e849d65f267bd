"""`pbxrelay sandbox`: a local VirtualPBX plus every vendor stand-in, for demos and manual testing.

Each stand-in is served on its own port (VirtualPBX on the first, then Slack, Trello, Google
Sheets, VirtualText). The settings that point pbxrelay at them, and the demo credentials the
example rules files read through ``env:``, are printed and written to ``<var_dir>/sandbox.env``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path

from service.sandbox.standins.base import RunningServer, serve_in_thread

# The demo CRM's Standard Webhooks secret: fixed, like the other demo credentials, so .env survives restarts.
CRM_SIGNING_SECRET = "whsec_" + base64.b64encode(hashlib.sha256(b"pbxrelay sandbox crm").digest()).decode()


@dataclass
class Sandbox:
    """The running stand-ins, their states (for the demo's report) and the environment they imply."""

    servers: dict[str, RunningServer] = field(default_factory=dict)
    states: dict[str, object] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    facts: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """Stop every stand-in."""
        for server in self.servers.values():
            server.stop()


def start(host: str, port: int, *, var_dir: Path) -> Sandbox:
    """Start every stand-in on consecutive ports from ``port`` (0 = free ports) and describe them."""
    # Imported here: the stand-ins import this package's standins.base, so importing them at the top would cycle.
    from service.sandbox.standins import google_sheets as sheets
    from service.sandbox.standins import slack, trello, virtualtext
    from service.sandbox.virtualpbx import standin

    box = Sandbox()
    apps = {"virtualpbx": (standin.create_app, standin.demo_state()),
            "slack": (slack.create_app, slack.SlackStandin.with_defaults()),
            "trello": (trello.create_app, trello.TrelloStandin.with_defaults()),
            "google_sheets": (sheets.create_app, sheets.SheetsStandin.with_defaults()),
            "virtualtext": (virtualtext.create_app, virtualtext.VirtualTextStandin.with_defaults())}
    for offset, (name, (create_app, state)) in enumerate(apps.items()):
        box.servers[name] = serve_in_thread(create_app(state), host=host, port=port + offset if port else 0)
        box.states[name] = state
    urls = {name: server.url for name, server in box.servers.items()}

    var_dir.mkdir(parents=True, exist_ok=True)
    sa_path = (var_dir / "sandbox-service-account.json").resolve()
    sa_json = sheets.new_service_account(box.states["google_sheets"], f"{urls['google_sheets']}/token",
                                         share=[sheets.DEFAULT_SPREADSHEET_ID])
    sa_path.write_text(sa_json)
    os.chmod(sa_path, 0o600)
    box.env = _environment(urls, sa_path, sa_json)
    box.facts = _facts(urls, sa_path)
    # Quoted for `set -a; . sandbox.env`: the credentials JSON holds spaces and quotes.
    (var_dir / "sandbox.env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in box.env.items()))
    return box


def _environment(urls: dict[str, str], sa_path: Path, sa_json: str) -> dict[str, str]:
    """The settings that point pbxrelay at the stand-ins, and the demo credentials the example rules read."""
    from service.sandbox.standins import google_sheets as sheets
    from service.sandbox.standins import slack, trello, virtualtext
    from service.sandbox.virtualpbx import standin

    return {
        # The stand-ins listen on 127.0.0.1 over http, which the outbound guard refuses by default.
        "PBXRELAY_ALLOW_PRIVATE_URLS": "true",
        "PBXRELAY_VIRTUALPBX_API_URL": urls["virtualpbx"],
        "PBXRELAY_SLACK_API_URL": f"{urls['slack']}/api/",
        "PBXRELAY_TRELLO_API_URL": urls["trello"],
        "PBXRELAY_GOOGLE_SHEETS_API_URL": urls["google_sheets"],
        "PBXRELAY_VIRTUALTEXT_API_URL": urls["virtualtext"],
        "SANDBOX_ACCOUNT_ID": standin.DEMO_ACCOUNT_ID,
        "SANDBOX_VIRTUALPBX_API_KEY": standin.DEMO_API_KEY,
        "SANDBOX_SLACK_TOKEN": slack.DEFAULT_TOKEN,
        "SANDBOX_SLACK_CHANNEL": slack.DEFAULT_CHANNEL_ID,
        "SANDBOX_TRELLO_KEY": trello.DEFAULT_KEY,
        "SANDBOX_TRELLO_TOKEN": trello.DEFAULT_TOKEN,
        "SANDBOX_TRELLO_LIST": next(iter(trello.DEFAULT_LISTS)),
        "SANDBOX_SHEETS_CREDENTIALS_FILE": str(sa_path),
        # The key itself, on one line: a rules file's `env:` reads a value, and `file:` may not leave
        # the rules file's directory, so the examples cannot use the path above.
        "SANDBOX_SHEETS_CREDENTIALS": json.dumps(json.loads(sa_json)),
        "SANDBOX_SPREADSHEET_ID": sheets.DEFAULT_SPREADSHEET_ID,
        "SANDBOX_VIRTUALTEXT_KEY": virtualtext.DEFAULT_API_KEY,
        "SANDBOX_VIRTUALTEXT_FROM": virtualtext.DEFAULT_NUMBER,
        "SANDBOX_CRM_SIGNING_SECRET": CRM_SIGNING_SECRET,
    }


def _facts(urls: dict[str, str], sa_path: Path) -> list[str]:
    """One line per stand-in: where it is and the demo credentials it accepts."""
    from service.sandbox.standins import google_sheets as sheets
    from service.sandbox.standins import slack, trello, virtualtext
    from service.sandbox.virtualpbx import standin

    pbx, voicemail_list, missed_list = urls["virtualpbx"], *list(trello.DEFAULT_LISTS)
    return [
        f"VirtualPBX   {pbx}/v2   account {standin.DEMO_ACCOUNT_ID}   API key {standin.DEMO_API_KEY}",
        f"Slack        {urls['slack']}/api/   bot token {slack.DEFAULT_TOKEN}   channel #calls "
        f"({slack.DEFAULT_CHANNEL_ID})",
        f"Trello       {urls['trello']}/1   key {trello.DEFAULT_KEY}   lists: Voicemail {voicemail_list}, "
        f"Missed calls {missed_list}",
        f"Sheets       {urls['google_sheets']}/v4   spreadsheet {sheets.DEFAULT_SPREADSHEET_ID}   "
        f"service account {sa_path}",
        f"VirtualText  {urls['virtualtext']}/v1   key {virtualtext.DEFAULT_API_KEY}   "
        f"from {virtualtext.DEFAULT_NUMBER}",
        f"CRM          hooks signed (Standard Webhooks) with {CRM_SIGNING_SECRET}",
        f"Records      GET <stand-in>/_standin/... ; calls: POST {pbx}/_standin/simulate",
    ]


CONSOLE_EMAIL = "sandbox@example.com"  # the console operator `pbxrelay sandbox` creates


def console_login(database_url: str) -> str | None:
    """Create the sandbox's console operator with a random password and return it (None: created before)."""
    import secrets

    from service.console import users
    from service.console.audit import CLI_ACTOR
    from service.store.models import migrate, session_factory

    migrate(database_url)
    with session_factory(database_url).begin() as session:
        if users.find_user(session, CONSOLE_EMAIL) is not None:
            return None
        password = secrets.token_urlsafe(12)
        users.create_user(session, CONSOLE_EMAIL, password, is_operator=True, actor=CLI_ACTOR)
    return password


def run(host: str, port: int) -> None:
    """Serve the sandbox until interrupted, printing what it accepts and how to sign in to the console."""
    from service.config import get_settings

    settings = get_settings()
    var_dir = settings.var_dir
    box = start(host, port, var_dir=var_dir)
    print("pbxrelay sandbox (fake vendors; nothing leaves this machine):", flush=True)
    for line in box.facts:
        print("  " + line, flush=True)
    print(f"\nSettings and demo credentials are in {var_dir / 'sandbox.env'}; load them with:\n"
          f"  set -a; . {var_dir / 'sandbox.env'}; set +a", flush=True)
    password = console_login(settings.effective_database_url)
    login = (f"with the password {password} (shown once)" if password else
             "with the password printed when the sandbox first created it")
    print(f"\nConsole (once `pbxrelay run` serves it): {settings.public_url}/console/ ; sign in as {CONSOLE_EMAIL} "
          f"{login}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        box.stop()
