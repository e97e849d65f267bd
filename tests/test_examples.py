"""Every rules file in examples/ applies with `pbxrelay rules apply` against the sandbox's environment."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from service import sandbox
from tests.harness import Service

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))


@pytest.fixture(scope="module")
def service(tmp_path_factory, redis_url):
    """A deployment whose environment holds exactly the sandbox's variables (none from the caller's shell)."""
    tmp = tmp_path_factory.mktemp("examples")
    box = sandbox.start("127.0.0.1", 0, var_dir=tmp / "sandbox")
    svc = Service(tmp, redis_url=redis_url, namespace=f"ex{uuid.uuid4().hex[:8]}", env=box.env)
    for name in [k for k in svc.env if k.startswith("SANDBOX_") and k not in box.env]:
        del svc.env[name]  # a developer's loaded sandbox.env must not make a broken reference pass
    svc.cli("migrate")
    svc.add_account(box.env["SANDBOX_ACCOUNT_ID"], "Demo Dental")
    yield svc
    box.stop()


def test_the_promised_examples_exist():
    """One file per integration plus the demo's."""
    assert {"slack.yaml", "trello.yaml", "google_sheets.yaml", "sms.yaml", "demo.yaml"} <= {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_example_applies(service, path):
    """`pbxrelay rules apply` accepts the file with only the sandbox's variables set."""
    result = service.cli("rules", "apply", str(path))
    assert "applied" in result.stdout and "5a2d994fbae69b1d6b01eb9f0e7dfe62" in result.stdout


def test_an_unset_sandbox_variable_is_refused(service):
    """The check above has teeth: without the sandbox's variables the demo file is rejected, naming the variable."""
    env = dict(service.env)
    service.env = {k: v for k, v in env.items() if not k.startswith("SANDBOX_")}
    try:
        result = service.cli("rules", "apply", str(EXAMPLES / "demo.yaml"), check=False)
    finally:
        service.env = env
    assert result.returncode != 0
    assert "SANDBOX_VIRTUALPBX_API_KEY is not set" in result.stderr


def test_the_demo_finds_its_rules_file():
    """`pbxrelay demo` applies examples/demo.yaml, found from the module's own place in the tree."""
    from service.sandbox import demo

    assert demo.RULES_FILE.is_file() and demo.RULES_FILE.parent.name == "examples"
