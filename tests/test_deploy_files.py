"""docker-compose.yml, .env.example and the Dockerfile agree with the code (no Docker engine runs here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import check_jsonschema
import jsonschema
import yaml
from click.testing import CliRunner

from service.cli import main
from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    """The parsed docker-compose.yml."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_validates_against_the_compose_spec():
    """The compose file is valid per the Compose Specification schema (vendored by check-jsonschema)."""
    schema_path = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(compose(), schema)


def test_compose_runs_the_five_services_with_real_cli_commands():
    """redis, postgres, web, worker and scheduler exist, and every pbxrelay command they run exists."""
    services = compose()["services"]
    assert {"redis", "postgres", "web", "worker", "scheduler"} <= services.keys()
    runner = CliRunner()
    for name in ("web", "worker", "scheduler"):
        command = services[name]["command"]
        assert command[0] == "pbxrelay"
        result = runner.invoke(main, [*command[1:2], "--help"])
        assert result.exit_code == 0, f"{name}: `pbxrelay {command[1]}` is not a command: {result.output}"
        options = {o for o in command[2:] if o.startswith("--")}
        for option in options:
            assert option in result.output, f"{name}: `pbxrelay {command[1]}` has no option {option}"


def test_env_example_lists_every_setting_with_a_comment():
    """Each Settings field appears in .env.example, preceded by a comment line, and nothing else does."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    documented = {}
    for i, line in enumerate(lines):
        match = re.match(r"^(PBXRELAY_[A-Z0-9_]+)=", line)
        if match:
            documented[match.group(1)] = i
            previous = lines[i - 1]
            assert previous.startswith("#") or re.match(r"^PBXRELAY_[A-Z0-9_]+=", previous), line
    expected = {f"PBXRELAY_{name.upper()}" for name in Settings.model_fields}
    assert set(documented) == expected


def test_dockerfile_installs_the_packages_compose_runs():
    """The image copies every top-level package and installs the project."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("service", "workers", "integrations"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "pip install" in dockerfile
