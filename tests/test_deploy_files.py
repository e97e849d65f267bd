"""docker-compose.yml, .env.example and the Dockerfile agree with the code (no Docker engine runs here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import check_jsonschema
import jsonschema
import pytest
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


def test_compose_runs_the_services_with_real_cli_commands():
    """redis, postgres, web, the two workers and scheduler exist, and every pbxrelay command they run exists."""
    services = compose()["services"]
    assert {"redis", "postgres", "web", "worker", "actions", "scheduler"} <= services.keys()
    runner = CliRunner()
    for name in ("web", "worker", "actions", "scheduler"):
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


def nginx_directives() -> dict[str, list[str]]:
    """deploy/nginx.conf's active (uncommented) simple directives: name -> list of their argument strings."""
    found: dict[str, list[str]] = {}
    for line in (ROOT / "deploy" / "nginx.conf").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.endswith(";"):
            name, _, args = line[:-1].partition(" ")
            found.setdefault(name, []).append(args.strip())
    return found


def nginx_size(value: str) -> int:
    """An nginx size ("256k", "1m", "512") in bytes."""
    units = {"k": 1024, "m": 1024 * 1024}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].lower() in units else int(value)


def test_only_nginx_is_published_and_it_runs_the_shipped_config():
    """`proxy` (nginx) mounts deploy/nginx.conf and is the one published port; web is reachable only behind it."""
    services = compose()["services"]
    proxy = services["proxy"]
    assert proxy["image"].startswith("nginx:")
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert proxy["depends_on"]["web"]["condition"] == "service_healthy"
    assert "ports" not in services["web"] and services["web"]["expose"] == ["8000"]
    published = [name for name, spec in services.items() if spec.get("ports")]
    assert published == ["proxy"]
    directives = nginx_directives()
    web_port = services["web"]["command"][services["web"]["command"].index("--port") + 1]
    assert directives["server"] == [f"web:{web_port}"]


def test_nginx_limits_match_the_receiver():
    """Body limits = the API's and, under /hooks/, max_body_bytes; a 16 KB line admits Kazoo's longest GET;
    header/body/send timeouts; buffering."""
    from service.api import MAX_BODY_BYTES as API_MAX_BODY_BYTES
    from service.sandbox.virtualpbx.sender import encode_kazoo_form
    from service.web.server import LINE_LIMIT
    from tests.conftest import load_fixture

    d = nginx_directives()
    everywhere, hooks = d["client_max_body_size"]
    assert (nginx_size(everywhere), nginx_size(hooks)) == (API_MAX_BODY_BYTES, Settings().max_body_bytes)
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.search(r"location /hooks/ \{\s*client_max_body_size " + re.escape(hooks), text)
    assert nginx_size(d["client_body_buffer_size"][0]) >= API_MAX_BODY_BYTES  # never spooled to disk
    count, size = d["large_client_header_buffers"][0].split()
    longest_get = len(encode_kazoo_form(load_fixture("kazoo/webhook_notifications_missed_call.json")))
    assert nginx_size(size) == LINE_LIMIT and nginx_size(size) >= 2 * (longest_get + 100), (size, longest_get)
    assert int(count) * nginx_size(size) <= 64 * 1024
    for timeout in ("client_header_timeout", "client_body_timeout", "send_timeout", "lingering_time"):
        assert int(d[timeout][0].rstrip("s")) <= 20, timeout
    assert d["proxy_request_buffering"] == ["on"] and d["proxy_buffering"] == ["on"]
    assert d["access_log"] == ["off"]  # hook URLs carry tokens
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "# server {" in text and "listen 443 ssl" in text and "ssl_certificate" in text  # TLS, ready to enable


def test_nginx_accepts_the_shipped_config(tmp_path):
    """`nginx -t` accepts deploy/nginx.conf (the compose host name `web` swapped for one that resolves here)."""
    if not os.path.exists("/usr/sbin/nginx"):
        if os.environ.get("CI"):
            pytest.fail("/usr/sbin/nginx is required on CI (apt-get install -y nginx-light)")
        pytest.skip("/usr/sbin/nginx not installed (apt-get install nginx-light)")
    conf = tmp_path / "nginx.conf"
    conf.write_text((ROOT / "deploy" / "nginx.conf").read_text().replace("server web:", "server 127.0.0.1:")
                    .replace("listen 80;", "listen 127.0.0.1:1;"))
    result = subprocess.run(["/usr/sbin/nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr",
                             "-g", f"pid {tmp_path / 'nginx.pid'};"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
