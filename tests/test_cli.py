"""The pbxrelay command line: clear errors and non-zero exits on bad input, secrets never printed."""

from __future__ import annotations

import json
import re
import textwrap
import uuid

import pytest

from tests.harness import Service, free_port

ACCOUNT = "91eb05e5c68d7ca05e7618b6821d2d16"


@pytest.fixture(scope="module")
def cli(tmp_path_factory, redis_url):
    """A deployment's CLI (no processes started) with one account."""
    svc = Service(tmp_path_factory.mktemp("cli"), redis_url=redis_url, namespace=f"cli{uuid.uuid4().hex[:8]}",
                  env={"CLI_TEST_TOKEN": "xoxb-cli-secret-token-value"})
    svc.cli("migrate")
    svc.added = svc.add_account(ACCOUNT)
    return svc


@pytest.mark.parametrize("args, code, message", [
    (["accounts", "add", "nothex", "--name", "X"], 1, "invalid account id"),
    (["accounts", "add", ACCOUNT, "--name", "X"], 1, "exists already"),
    (["accounts", "add", "a" * 32, "--name", "X", "--timezone", "Nowhere/Town"], 1, "unknown time zone"),
    (["accounts", "add", "b" * 32], 2, "Missing option '--name'"),
    (["web", "--port", "70000"], 2, "70000 is not in the range"),
    (["rules", "export", "c" * 32], 1, "no account"),
    (["rules", "export", ACCOUNT], 1, "has no rules yet"),
    (["deliveries", "d" * 32], 1, "no account"),
    (["dead", "replay"], 2, "give --delivery"),
    (["dead", "replay", "--event", "k"], 2, "--event needs --account"),
    (["dead", "discard", "999999"], 1, "discarded 0"),
    (["connections", "resume", ACCOUNT, "nope"], 1, "no longer exists"),
    (["rules", "apply", "/does/not/exist.yaml"], 2, "does not exist"),
], ids=["bad-id", "twice", "bad-tz", "no-name", "bad-port", "export-unknown", "export-none", "deliveries-unknown",
        "replay-nothing", "replay-event-no-account", "discard-missing", "resume-unknown", "apply-missing"])
def test_bad_input_gives_a_clear_error_and_exit_code(cli, args, code, message):
    """Every bad invocation exits non-zero with a message naming the problem, and no traceback."""
    result = cli.cli(*args, check=False)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_accounts_add_json_and_list(cli):
    """--json prints one object with account_id and hook_url; list never shows the token."""
    added = cli.added
    assert added["account_id"] == ACCOUNT and added["hook_url"].startswith(f"{cli.url}/hooks/virtualpbx/")
    token = added["hook_url"].rsplit("/", 1)[1]
    assert len(token) >= 22  # >= 128 bits in base64url
    listed = [json.loads(line) for line in cli.cli("accounts", "list", "--json").stdout.splitlines()]
    assert any(row["account_id"] == ACCOUNT for row in listed)
    assert token not in cli.cli("accounts", "list").stdout


def test_rules_apply_errors_name_file_rule_and_field_and_change_nothing(cli, tmp_path):
    """A broken rules file is refused whole: the message names file, rule and field; nothing is stored."""
    bad = tmp_path / "broken.yaml"
    bad.write_text(textwrap.dedent(f"""
        account: {{id: {ACCOUNT}, name: Acme, timezone: UTC}}
        connections:
          chat: {{integration: slack, bot_token: env:CLI_TEST_TOKEN}}
        rules:
          - name: typo
            on: call.missed
            do:
              - {{use: chat, action: post_message, with: {{chanel: C1, text: hi}}}}
    """))
    result = cli.cli("rules", "apply", str(bad), check=False)
    assert result.returncode == 1
    assert "broken.yaml" in result.stderr and "rule 'typo'" in result.stderr and "chanel" in result.stderr
    assert "has no rules yet" in cli.cli("rules", "export", ACCOUNT, check=False).stderr


def test_secrets_are_never_printed(cli, tmp_path):
    """After apply, export shows env references or stored:, and no command prints the token."""
    good = tmp_path / "good.yaml"
    good.write_text(textwrap.dedent(f"""
        account: {{id: {ACCOUNT}, name: Acme, timezone: UTC}}
        connections:
          chat: {{integration: slack, bot_token: env:CLI_TEST_TOKEN}}
          literal: {{integration: slack, bot_token: xoxb-literal-secret-in-file}}
        rules:
          - name: hi
            on: call.missed
            do: [{{use: chat, action: post_message, with: {{channel: C1, text: hi}}}}]
    """))
    applied = cli.cli("rules", "apply", str(good))
    exported = cli.cli("rules", "export", ACCOUNT).stdout
    listed = cli.cli("connections", "list", ACCOUNT).stdout
    everything = applied.stdout + applied.stderr + exported + listed
    assert "xoxb-cli-secret-token-value" not in everything and "xoxb-literal-secret-in-file" not in everything
    assert "env:CLI_TEST_TOKEN" in exported and "bot_token: 'stored:'" in exported
    reapplied = tmp_path / "export.yaml"
    reapplied.write_text(exported)
    cli.cli("rules", "apply", str(reapplied))  # an export applies again, keeping the stored secret


def test_rules_test_is_a_dry_run(cli, tmp_path):
    """rules test shows the parsed event, the call events and the rendered actions; a malformed file fails."""
    event = tmp_path / "missed.json"
    event.write_text(json.dumps({"event_name": "missed_call", "event_category": "notification", "app_name": "x",
                                 "call_id": "c-1", "caller_id_number": "+15551230000", "timestamp": 63900000000}))
    shown = json.loads(cli.cli("rules", "test", ACCOUNT, str(event)).stdout)
    assert shown["event"]["type"] == "virtualpbx.notifications"
    assert [e["type"] for e in shown["call_events"]] == ["call.missed"]
    assert shown["actions"] == [{"event": "call.missed", "rule": "hi", "use": "chat", "integration": "slack",
                                 "action": "post_message", "with": {"channel": "C1", "text": "hi"}}]
    assert cli.deliveries(ACCOUNT) == []  # nothing happened
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    result = cli.cli("rules", "test", ACCOUNT, str(broken), check=False)
    assert result.returncode == 1 and "invalid JSON" in result.stderr


def test_rotate_token_rotates_each_hook_url_separately_and_apply_warns_about_unsigned_crm(cli, tmp_path):
    """rotate-token prints a new Kazoo URL, --crm a new CRM URL, each leaving the other; signing: none warns."""
    account = "e" * 32
    added = json.loads(cli.cli("accounts", "add", account, "--name", "Rotating", "--json").stdout)
    assert added["crm_hook_url"].startswith(f"{cli.url}/hooks/crm/")
    assert added["crm_hook_url"].rsplit("/", 1)[1] != added["hook_url"].rsplit("/", 1)[1]
    hook = cli.cli("accounts", "rotate-token", account).stdout.strip()
    assert hook.startswith(f"{cli.url}/hooks/virtualpbx/") and hook != added["hook_url"]
    crm = cli.cli("accounts", "rotate-token", account, "--crm").stdout.strip()
    assert crm.startswith(f"{cli.url}/hooks/crm/") and crm != added["crm_hook_url"]
    rules = tmp_path / "unsigned.yaml"
    rules.write_text(f"account: {{id: {account}, name: Rotating, timezone: UTC}}\ncrm: {{signing: none}}\n")
    applied = cli.cli("rules", "apply", str(rules))
    assert "warning: crm.signing is none" in applied.stderr
    rules.write_text(f"account: {{id: {account}, name: Rotating, timezone: UTC}}\ncrm: {{event_id: id}}\n")
    assert "refuses every request (401)" in cli.cli("rules", "apply", str(rules)).stderr
    rules.write_text(f"account: {{id: {account}, name: Rotating, timezone: UTC}}\n"
                     "crm: {signing: none, signing_secret: whsec_x}\n")
    both = cli.cli("rules", "apply", str(rules), check=False)
    assert both.returncode == 1 and "either signing_secret or signing: none" in both.stdout + both.stderr


def test_rotate_token_refuses_without_redis_and_rotates_nothing(cli):
    """Without Redis, receivers' token caches could not be told: the command refuses and the old URL stays."""
    account = "f" * 32
    added = json.loads(cli.cli("accounts", "add", account, "--name", "NoRedis", "--json").stdout)
    import sqlalchemy as sa

    engine = sa.create_engine(cli.env["PBXRELAY_DATABASE_URL"])
    stored = lambda: engine.connect().execute(  # noqa: E731
        sa.text("SELECT hook_token_hash, crm_token_hash FROM accounts WHERE id = :id"), {"id": account}).one()
    before = stored()
    saved = cli.env["PBXRELAY_REDIS_URL"]
    cli.env["PBXRELAY_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    try:
        refused = [cli.cli("accounts", "rotate-token", account, *flag, check=False) for flag in ([], ["--crm"])]
    finally:
        cli.env["PBXRELAY_REDIS_URL"] = saved
    for result in refused:
        assert (result.returncode == 1 and "Redis does not answer" in result.stderr
                and "nothing rotated" in result.stderr)
        assert "/hooks/" not in result.stdout
    assert stored() == before
    assert cli.cli("accounts", "rotate-token", account).stdout.strip() != added["hook_url"]
    assert stored()[0] != before[0] and stored()[1] == before[1]
    engine.dispose()


def test_demo_keep_stops_the_service_on_sigterm(tmp_path):
    """`pbxrelay demo --keep` runs until stopped; SIGTERM (not only Ctrl-C) stops it and the service it started."""
    import os
    import signal
    import subprocess
    import time

    import requests

    from tests.harness import PBXRELAY, wait_for

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PBXRELAY_", "SANDBOX_"))}
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        demo = subprocess.Popen([*PBXRELAY, "demo", "--calls", "2", "--keep"], cwd=tmp_path, env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "still running" in out.read_text(), timeout=180, message="the demo to settle")
        console = re.search(r"^console: (http://\S+)", out.read_text(), re.MULTILINE).group(1)
        assert requests.get(console, timeout=5, allow_redirects=False).status_code in (200, 302)
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) is not None
        time.sleep(0.5)
        with pytest.raises(requests.ConnectionError):
            requests.get(console, timeout=5)
        assert "stopping" in out.read_text()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)


def test_run_starts_a_new_worker_only_when_its_watchdog_ended_it():
    """`pbxrelay run` replaces a worker that exited with the watchdog's status; any other exit stops everything."""
    import subprocess
    import sys

    from service.cli.processes import ended_by_watchdog
    from service.queue import WATCHDOG_EXIT_STATUS

    def exited(code: int) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
        child.wait(timeout=30)
        return child

    watchdog, crashed = exited(WATCHDOG_EXIT_STATUS), exited(1)
    assert ended_by_watchdog(watchdog, [watchdog.args])
    assert not ended_by_watchdog(crashed, [crashed.args])
    assert not ended_by_watchdog(watchdog, [["python", "-m", "service.cli", "web"]])  # not a worker
