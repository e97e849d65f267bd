"""`pbxrelay demo`: the sandbox, the whole service and a morning of calls, with a summary and an HTML report.

Everything runs on this machine: the stand-ins in this process (free ports), pbxrelay as a real
``pbxrelay run`` subprocess (receiver, worker, scheduler, embedded Redis unless PBXRELAY_REDIS_URL
is set) with a fresh var dir under ``var/demo``. The demo account is set up with the operator's own
commands (``accounts add``, ``rules apply examples/demo.yaml``, ``accounts connect``), so what it
shows is what an operator gets.
"""

from __future__ import annotations

import html
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from service import sandbox as sandbox_mod
from service.web.signing import sign

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "examples" / "demo.yaml"
ACCOUNT_NAME = "Demo Dental"
TIMEZONE = "America/New_York"
# What a "morning" sends besides the calls: a booking confirmation (VirtualText), a payment reminder
# (Dash API) and a booking for a contact the CRM marks as opted out (must not be texted).
CRM_EVENTS = (
    {"id": "demo-evt-1", "type": "appointment.booked", "appointment": {"starts_at": "2026-12-01T15:30:00Z"},
     "contact": {"first_name": "Pat", "phone": "+12025550123", "sms_opt_out": False}},
    {"id": "demo-evt-2", "type": "invoice.overdue", "invoice": {"amount": "85.00"},
     "contact": {"first_name": "Sam", "phone": "+12125550199", "sms_opt_out": False}},
    {"id": "demo-evt-3", "type": "appointment.booked", "appointment": {"starts_at": "2026-12-02T14:00:00Z"},
     "contact": {"first_name": "Jordan", "phone": "+13125550142", "sms_opt_out": True}},
)
UNFINISHED = ("pending", "retrying", "running")
CONSOLE_EMAIL = "demo@example.com"  # the demo's operator, to sign in to the console with --keep


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where its log is."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DemoService:
    """The ``pbxrelay run`` subprocess: its environment, URL, log and CLI."""

    env: dict[str, str]
    url: str
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self, port: int) -> None:
        """Start ``pbxrelay run`` in its own process group and wait until the receiver answers."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "service.cli", "run", "--port", str(port)],
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DemoError(f"pbxrelay run exited with {self.process.returncode}; see {self.log_path}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise DemoError(f"the receiver did not answer within 90 s; see {self.log_path}")

    def cli(self, *args: str, stdin: str | None = None) -> str:
        """Run one ``pbxrelay`` command against the demo service; its stdout."""
        proc = subprocess.run([sys.executable, "-m", "service.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=120, input=stdin)
        if proc.returncode != 0:
            raise DemoError(f"pbxrelay {' '.join(args)} failed:\n{proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def deliveries(self, account_id: str) -> list[dict[str, Any]]:
        """The account's delivery log."""
        out = self.cli("deliveries", account_id, "--json", "--limit", "10000")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        """SIGTERM ``pbxrelay run`` (it stops its children), then SIGKILL whatever is left of its group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)


@dataclass
class Outcome:
    """What the demo produced, read from the stand-ins and the delivery log."""

    calls: list[dict[str, Any]]
    slack: list[dict[str, Any]]
    cards: list[dict[str, Any]]
    sheet: list[list[str]]
    virtualtext: list[dict[str, Any]]
    dash: list[dict[str, Any]]
    deliveries: list[dict[str, Any]] = field(default_factory=list)


def service_env(box: sandbox_mod.Sandbox, var_dir: Path, url: str) -> dict[str, str]:
    """The service's environment: no PBXRELAY_* of the caller's except an explicit Redis, plus the sandbox's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PBXRELAY_")}
    redis_url = os.environ.get("PBXRELAY_REDIS_URL")
    env.update(box.env)
    env.update({
        # Explicit, so a .env in the working directory cannot point the demo at a real database or URL.
        "PBXRELAY_VAR_DIR": str(var_dir),
        "PBXRELAY_DATABASE_URL": f"sqlite:///{var_dir / 'pbxrelay.sqlite3'}",
        "PBXRELAY_PUBLIC_URL": url,
        "PBXRELAY_LOG_LEVEL": "WARNING",
        "NO_PROXY": "127.0.0.1,localhost",
    })
    if redis_url:
        env["PBXRELAY_REDIS_URL"] = redis_url
        # A shared Redis may hold another deployment's keys; a namespace of our own keeps them apart.
        env["PBXRELAY_NAMESPACE"] = f"demo{uuid.uuid4().hex[:8]}"
    return env


def crm_secret(env: dict[str, str]) -> str | None:
    """The demo rules' CRM signing secret, resolved as `rules apply` resolves it (None when unsigned)."""
    from integrations import REGISTRY
    from service.rules import load_rules, resolve_crm_secret

    rules = load_rules(RULES_FILE.read_text(), filename=str(RULES_FILE), registry=REGISTRY)
    return resolve_crm_secret(rules.crm, base_dir=RULES_FILE.parent, environ=env) if rules.crm else None


def post_crm(url: str, event: dict[str, Any], secret: str | None) -> int:
    """POST one CRM event as JSON, signed (Standard Webhooks) when the rules ask for it; the HTTP status."""
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json"}
    if secret:
        msg_id, stamp = f"msg_{uuid.uuid4().hex}", int(time.time())
        headers.update({"webhook-id": msg_id, "webhook-timestamp": str(stamp),
                        "webhook-signature": sign(secret, msg_id, stamp, body)})
    return requests.post(url, data=body, headers=headers, timeout=10).status_code


def wait_until_settled(svc: DemoService, account_id: str, *, calls: int, crm_events: int,
                       timeout: float) -> tuple[list[dict[str, Any]], bool]:
    """Poll the delivery log until every call has its call-log row planned and nothing is left to do."""
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        log = svc.deliveries(account_id)
        planned_rows = sum(1 for d in log if d["event"] == "call.ended")
        planned_crm = sum(1 for d in log if d["event"] == "crm.event")
        busy = [d for d in log if d["status"] in UNFINISHED]
        snapshot = sorted((d["id"], d["status"]) for d in log)
        # call.ended is planned seconds after the last hook (the settle time), so "nothing pending"
        # alone could be read too early: also require every call and CRM event, and one quiet poll.
        if planned_rows >= calls and planned_crm >= crm_events and not busy and snapshot == previous:
            return log, True
        if time.monotonic() > deadline:
            return log, False
        previous = snapshot
        time.sleep(2)


def say(text: str) -> None:
    """Narrate one step (flushed: the demo's steps take seconds)."""
    print(text, flush=True)


def collect(box: sandbox_mod.Sandbox, account_id: str, calls: list[dict[str, Any]],
            log: list[dict[str, Any]]) -> Outcome:
    """Read what every stand-in recorded."""
    from service.sandbox.standins.google_sheets import DEFAULT_SPREADSHEET_ID

    slack, trello, sheets = box.states["slack"], box.states["trello"], box.states["google_sheets"]
    pbx = box.states["virtualpbx"]
    with slack.lock:
        messages = [dict(m) for m in slack.messages]
    with pbx.lock:
        dash = sorted((dict(m) for m in pbx.accounts[account_id].sms.values()), key=lambda m: m["created"])
    return Outcome(calls=calls, slack=messages,
                   cards=trello.all_cards(), sheet=sheets.rows(DEFAULT_SPREADSHEET_ID),
                   virtualtext=box.states["virtualtext"].sent(), dash=dash, deliveries=log)


def summary(outcome: Outcome) -> str:
    """The text table printed at the end."""
    scenarios = Counter(call["scenario"] for call in outcome.calls)
    sizes = [a.get("bytes") for card in outcome.cards for a in card["attachments"] if a.get("bytes")]
    statuses = Counter(d["status"] for d in outcome.deliveries)
    rows = [
        ("calls simulated", f"{len(outcome.calls)} ({', '.join(f'{n} {s}' for s, n in sorted(scenarios.items()))})"),
        ("Slack", f"{len(outcome.slack)} messages"),
        ("Trello", f"{len(outcome.cards)} cards, {len(sizes)} with audio"
                   + (f" ({', '.join(f'{s:,} B' for s in sizes)})" if sizes else "")),
        ("Google Sheets", f"{max(0, len(outcome.sheet) - 1)} rows (plus the header)"),
        ("VirtualText", f"{len(outcome.virtualtext)} SMS"),
        ("VirtualPBX Dash", f"{len(outcome.dash)} SMS"),
        ("deliveries", ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "none"),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"  {label:<{width}}  {value}" for label, value in rows]
    for d in outcome.deliveries:
        if d["status"] not in ("succeeded",):
            lines.append(f"    #{d['id']} {d['status']}: {d['rule']} -> {d['action']}: {d['error'] or ''}")
    return "\n".join(lines)


def report_html(outcome: Outcome) -> str:
    """A static page listing what each stand-in received; every value is escaped."""
    e = html.escape

    def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{e(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        return f"<h2>{e(title)} ({len(rows)})</h2>\n<table><tr>{head}</tr>{body}</table>\n"

    sheet_header, sheet_rows = (outcome.sheet[0], outcome.sheet[1:]) if outcome.sheet else ([], [])
    parts = [
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>pbxrelay demo</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;white-space:pre-wrap;text-align:left}"
        "</style></head><body>\n<h1>pbxrelay demo</h1>\n",
        table("Slack messages", ["channel", "text"],
              [[m.get("channel", ""), m.get("text", "")] for m in outcome.slack]),
        table("Trello cards", ["title", "description", "attachments"],
              [[c["name"], c["desc"], "; ".join(f"{a.get('name')} ({a.get('bytes') or 'link'} bytes)"
                                                 for a in c["attachments"])] for c in outcome.cards]),
        table("Google Sheets rows", sheet_header, sheet_rows),
        table("SMS", ["provider", "to", "body"],
              [["VirtualText", m["to"], m["body"]] for m in outcome.virtualtext]
              + [["VirtualPBX Dash", m["to"], m["body"]] for m in outcome.dash]),
        table("Deliveries", ["id", "event", "rule", "action", "status", "error"],
              [[d["id"], d["event"], d["rule"], d["action"], d["status"], d["error"] or ""]
               for d in outcome.deliveries]),
        "</body></html>\n",
    ]
    return "".join(parts)


def _interrupt(signum, _frame) -> None:
    """Turn a termination signal into KeyboardInterrupt, so the demo winds down as on Ctrl-C."""
    raise KeyboardInterrupt(f"signal {signum}")


def run(*, calls: int, seed: int, keep: bool, settle_timeout: float = 120.0) -> Path:
    """Run the whole demo and write the report; returns its path."""
    root = Path("var") / "demo"
    var_dir = (root / "service").resolve()
    shutil.rmtree(var_dir, ignore_errors=True)  # a fresh database, key and Redis every run
    var_dir.mkdir(parents=True)
    # The stand-ins serve in this process; their per-request lines would bury the demo's narration.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    box = sandbox_mod.start("127.0.0.1", 0, var_dir=(root / "sandbox").resolve())
    port = free_port()
    svc = DemoService(env={}, url=f"http://127.0.0.1:{port}", log_path=root.resolve() / "service.log")
    svc.env = service_env(box, var_dir, svc.url)
    account_id = box.env["SANDBOX_ACCOUNT_ID"]
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a terminal closed, `kill`, a supervisor) must stop the service below as Ctrl-C does: by
        # default Python would end at once, skipping the `finally` and leaving `pbxrelay run` behind.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        say(f"sandbox: VirtualPBX {box.servers['virtualpbx'].url}, stand-ins for Slack, Trello, Sheets, VirtualText")
        say(f"starting pbxrelay run on {svc.url} (log: {svc.log_path})")
        svc.start(port)
        account = json.loads(svc.cli("accounts", "add", account_id, "--name", ACCOUNT_NAME, "--timezone", TIMEZONE,
                                     "--json"))
        say(f"account {account_id} added; " + svc.cli("rules", "apply", str(RULES_FILE)).strip())
        connected = svc.cli("accounts", "connect", account_id)
        say(f"accounts connect: {sum(1 for line in connected.splitlines() if line.startswith('created'))} "
            "hooks registered in VirtualPBX")

        say(f"simulating a morning of {calls} calls (seed {seed}) ...")
        answer = requests.post(f"{box.servers['virtualpbx'].url}/_standin/simulate", timeout=600, json={
            "account_id": account_id, "scenario": "mixed_hour", "calls": calls, "seed": seed})
        answer.raise_for_status()
        simulated = answer.json()["calls"]
        secret = crm_secret(svc.env)
        for event in CRM_EVENTS:
            status = post_crm(account["crm_hook_url"], event, secret)
            if status != 200:
                raise DemoError(f"the CRM hook answered {status} to {event['id']}")
        say(f"{len(CRM_EVENTS)} CRM events posted ({'signed' if secret else 'unsigned'}); waiting for deliveries ...")
        log, settled = wait_until_settled(svc, account_id, calls=len(simulated), crm_events=len(CRM_EVENTS),
                                          timeout=settle_timeout)
        if not settled:
            say(f"warning: deliveries still unfinished after {settle_timeout:.0f} s; the summary shows them")
        outcome = collect(box, account_id, simulated, log)
        say("\n" + summary(outcome))
        report = root.resolve() / "report.html"
        report.write_text(report_html(outcome))
        say(f"\nreport: {report}")
        if not keep:
            say("run `pbxrelay demo --keep` to click through this morning in the console")
        else:
            email, password = CONSOLE_EMAIL, secrets.token_urlsafe(12)
            svc.cli("users", "add", email, "--operator", "--password-stdin", stdin=password + "\n")
            say(f"\nconsole: {svc.url}/console/accounts/{account_id}/  sign in as {email} with the password "
                f"{password} (shown once; the demo's database is new each run)")
            (root / "demo.env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in svc.env.items()
                                                  if k.startswith(("PBXRELAY_", "SANDBOX_"))))
            say(f"\nstill running (--keep): `set -a; . {root / 'demo.env'}; set +a` then e.g. "
                f"`pbxrelay deliveries {account_id}`. Ctrl-C stops everything.")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                say("\nstopping")
        return report
    finally:
        svc.stop()
        box.stop()
