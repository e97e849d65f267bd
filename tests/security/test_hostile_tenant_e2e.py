"""The hostile tenant against real processes: `pbxrelay rules apply`, a running receiver and a Celery worker.

Production settings (PBXRELAY_ALLOW_PRIVATE_URLS=false). The operator's VirtualText URL points at a
loopback listener, so a worker that connected anywhere near this host would show up there: it must
receive nothing, while the hook is still kept and its delivery recorded as refused.
"""

from __future__ import annotations

import json
import uuid

import pytest
import requests
import yaml

from tests.conftest import FIXTURES
from tests.harness import Service, wait_for

pytestmark = pytest.mark.e2e

VICTIM = "91eb05e5c68d7ca05e7618b6821d2d16"
ATTACKER = "a77ac4e2a77ac4e2a77ac4e2a77ac4e2"


def rules(account_id: str, texts: dict) -> str:
    """A rules file: parking hooks send an SMS through the `texts` connection."""
    return yaml.safe_dump({
        "account": {"id": account_id, "name": "Acme", "timezone": "UTC"},
        "connections": {"texts": {"integration": "virtualtext", **texts}},
        "rules": [{"name": "texts", "on": "virtualpbx.parking",
                   "do": [{"use": "texts", "action": "send_sms", "with": {"to": "+14155552671", "body": "hi"}}]}]})


def test_real_processes_refuse_the_hostile_files_and_never_connect_here(tmp_path, redis_url, listener):
    """Findings 1, 3 and 4 through the CLI, the receiver and a worker; the listener receives nothing."""
    svc = Service(tmp_path, redis_url=redis_url, namespace=f"sec{uuid.uuid4().hex[:8]}",
                  env={"PBXRELAY_ALLOW_PRIVATE_URLS": "false", "PBXRELAY_VIRTUALTEXT_API_URL": listener.url})
    svc.cli("migrate")
    svc.add_account(VICTIM)
    hook_url = svc.add_account(ATTACKER)["hook_url"]
    try:
        cases = {
            # finding 1: the file, aiming the Fernet key at the listener
            "keys.yaml": (rules(ATTACKER, {"api_key": "env:PBXRELAY_SECRET_KEYS", "api_url": f"{listener.url}/x"}),
                          "connections.texts.api_key: env:PBXRELAY_SECRET_KEYS is refused"),
            # finding 3: metadata and gopher
            "meta.yaml": (rules(ATTACKER, {"api_key": "vt_live_key_1", "api_url": "http://169.254.169.254/latest"}),
                          "connections.texts.api_url"),
            "gopher.yaml": (rules(ATTACKER, {"api_key": "vt_live_key_1",
                                             "api_url": f"gopher://127.0.0.1:{listener.port}/_"}),
                            "scheme gopher is not allowed"),
        }
        for name, (text, expected) in cases.items():
            (tmp_path / name).write_text(text)
            refused = svc.cli("rules", "apply", str(tmp_path / name), check=False)
            assert refused.returncode != 0 and expected in refused.stderr, refused.stderr
            assert svc.env["PBXRELAY_SECRET_KEYS"] not in refused.stdout + refused.stderr

        # finding 4: the victim's file applied to the attacker's account (`--account`), and back
        (tmp_path / "victim.yaml").write_text(rules(VICTIM, {"api_key": "vt_live_victim_1"}))
        svc.cli("rules", "apply", str(tmp_path / "victim.yaml"))
        before = svc.cli("rules", "export", VICTIM).stdout
        (tmp_path / "takeover.yaml").write_text(rules(VICTIM, {"api_key": "stored:"}))
        refused = svc.cli("rules", "apply", "--account", ATTACKER, str(tmp_path / "takeover.yaml"), check=False)
        assert refused.returncode != 0 and "account.id: the file is for account" in refused.stderr, refused.stderr
        assert svc.cli("rules", "export", VICTIM).stdout == before
        assert "has no rules yet" in svc.cli("rules", "export", ATTACKER, check=False).stderr

        # finding 3 at connect time: a valid file whose SMS would go to the operator's URL, here loopback
        (tmp_path / "ok.yaml").write_text(rules(ATTACKER, {"api_key": "vt_live_attacker_1"}))
        svc.cli("rules", "apply", "--account", ATTACKER, str(tmp_path / "ok.yaml"))
        svc.start_web()
        svc.start_worker(concurrency=1)
        payload = json.loads((FIXTURES / "kazoo/webhook_parking_park_parked.json").read_text())
        assert requests.post(hook_url, json=payload, timeout=10).status_code == 200
        [delivery] = wait_for(lambda: [d for d in svc.deliveries(ATTACKER) if d["status"] == "failed"], timeout=60,
                              message=f"a failed delivery\n{svc.log('worker')}")
        assert delivery["error"].startswith("UnsafeURL: api_url: host 127.0.0.1 is a loopback address")
        assert listener.nothing_received()
    finally:
        svc.stop()
