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
    from service.sandbox.standins import google_sheets as sheets
    from service.sandbox.standins import slack as slack
    from service.sandbox.standins import trello as trello
    from service.sandbox.virtualpbx import emulator
    from service.sandbox.standins import virtualtext as virtualtext

    box = Sandbox()

    def serve(name: str, app, state, offset: int) -> str:
        box.servers[name] = serve_in_thread(app, host=host, port=port + offset if port else 0)
        box.states[name] = state
        return box.servers[name].url

    pbx_state = emulator.demo_state()
    pbx = serve("virtualpbx", emulator.create_app(pbx_state), pbx_state, 0)
    slack_state = slack.SlackStandin.with_defaults()
    slack_url = serve("slack", slack.create_app(slack_state), slack_state, 1)
    trello_state = trello.TrelloStandin.with_defaults()
    trello_url = serve("trello", trello.create_app(trello_state), trello_state, 2)
    sheets_state = sheets.SheetsStandin.with_defaults()
    sheets_url = serve("google_sheets", sheets.create_app(sheets_state), sheets_state, 3)
    text_state = virtualtext.VirtualTextStandin.with_defaults()
    text_url = serve("virtualtext", virtualtext.create_app(text_state), text_state, 4)

    var_dir.mkdir(parents=True, exist_ok=True)
    sa_path = (var_dir / "sandbox-service-account.json").resolve()
    sa_json = sheets.new_service_account(sheets_state, f"{sheets_url}/token", share=[sheets.DEFAULT_SPREADSHEET_ID])
    sa_path.write_text(sa_json)
    os.chmod(sa_path, 0o600)
    voicemail_list, missed_list = list(trello.DEFAULT_LISTS)
    box.env = {
        # The stand-ins listen on 127.0.0.1 over http, which the outbound guard refuses by default.
        "PBXRELAY_ALLOW_PRIVATE_URLS": "true",
        "PBXRELAY_VIRTUALPBX_API_URL": pbx,
        "PBXRELAY_SLACK_API_URL": f"{slack_url}/api/",
        "PBXRELAY_TRELLO_API_URL": trello_url,
        "PBXRELAY_GOOGLE_SHEETS_API_URL": sheets_url,
        "PBXRELAY_VIRTUALTEXT_API_URL": text_url,
        "SANDBOX_ACCOUNT_ID": emulator.DEMO_ACCOUNT_ID,
        "SANDBOX_VIRTUALPBX_API_KEY": emulator.DEMO_API_KEY,
        "SANDBOX_SLACK_TOKEN": slack.DEFAULT_TOKEN,
        "SANDBOX_SLACK_CHANNEL": slack.DEFAULT_CHANNEL_ID,
        "SANDBOX_TRELLO_KEY": trello.DEFAULT_KEY,
        "SANDBOX_TRELLO_TOKEN": trello.DEFAULT_TOKEN,
        "SANDBOX_TRELLO_LIST": voicemail_list,
        "SANDBOX_SHEETS_CREDENTIALS_FILE": str(sa_path),
        # The key itself, on one line: a rules file's `env:` reads a value, and `file:` may not leave
        # the rules file's directory, so the examples cannot use the path above.
        "SANDBOX_SHEETS_CREDENTIALS": json.dumps(json.loads(sa_json)),
        "SANDBOX_SPREADSHEET_ID": sheets.DEFAULT_SPREADSHEET_ID,
        "SANDBOX_VIRTUALTEXT_KEY": virtualtext.DEFAULT_API_KEY,
        "SANDBOX_VIRTUALTEXT_FROM": virtualtext.DEFAULT_NUMBER,
        "SANDBOX_CRM_SIGNING_SECRET": CRM_SIGNING_SECRET,
    }
    box.facts = [
        f"VirtualPBX   {pbx}/v2   account {emulator.DEMO_ACCOUNT_ID}   API key {emulator.DEMO_API_KEY}",
        f"Slack        {slack_url}/api/   bot token {slack.DEFAULT_TOKEN}   channel #calls ({slack.DEFAULT_CHANNEL_ID})",
        f"Trello       {trello_url}/1   key {trello.DEFAULT_KEY}   lists: Voicemail {voicemail_list}, "
        f"Missed calls {missed_list}",
        f"Sheets       {sheets_url}/v4   spreadsheet {sheets.DEFAULT_SPREADSHEET_ID}   service account {sa_path}",
        f"VirtualText  {text_url}/v1   key {virtualtext.DEFAULT_API_KEY}   from {virtualtext.DEFAULT_NUMBER}",
        f"CRM          hooks signed (Standard Webhooks) with {CRM_SIGNING_SECRET}",
        f"Records      GET <stand-in>/_standin/... ; calls: POST {pbx}/_emulator/simulate",
    ]
    # Quoted for `set -a; . sandbox.env`: the credentials JSON holds spaces and quotes.
    (var_dir / "sandbox.env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in box.env.items()))
    return box


def run(host: str, port: int) -> None:
    """Serve the sandbox until interrupted, printing what it accepts."""
    from service.config import get_settings

    var_dir = get_settings().var_dir
    box = start(host, port, var_dir=var_dir)
    print("pbxrelay sandbox (fake vendors; nothing leaves this machine):", flush=True)
    for line in box.facts:
        print("  " + line, flush=True)
    print(f"\nSettings and demo credentials are in {var_dir / 'sandbox.env'}; load them with:\n"
          f"  set -a; . {var_dir / 'sandbox.env'}; set +a", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        box.stop()
