"""Supply chain: the lock files cover pyproject.toml, and pip-audit knows no vulnerability in what they pin.

The audit asks pip-audit's vulnerability services (PyPI's JSON API, then OSV). Where neither can give an answer
for every pinned package, the audit test skips and says why; it never passes on packages it could not check
(pip-audit itself exits 0 with "No known vulnerabilities found" when PyPI answers 404 for every package).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = ROOT / "requirements.lock"
TEST_LOCK = ROOT / "requirements-test.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

AUDIT_BUDGET_S = 55.0  # the whole audit, every service tried included
AUDIT_SERVICES = ("pypi", "osv")

# The lock files are made for CPython 3.11 on Linux x86_64 (bin/lock); markers are judged there.
LOCK_ENV = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.0",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def read_lock(path: Path) -> dict[str, tuple[Version, list[str]]]:
    """{canonical name: (pinned version, [hashes])} from a `uv pip compile --generate-hashes` file."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    pins: dict[str, tuple[Version, list[str]]] = {}
    for entry in logical:
        requirement, *options = entry.split()
        req = Requirement(requirement)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {requirement} is not an exact pin"
        hashes = [o.split("=", 1)[1] for o in options if o.startswith("--hash=")]
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}: {name} is pinned twice"
        pins[name] = (Version(specs[0].version), hashes)
    return pins


def unmet(requirements: list[str], pins: dict[str, tuple[Version, list[str]]]) -> list[str]:
    """The requirements (PEP 508 strings) that the pins do not satisfy, each with the reason."""
    problems = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(LOCK_ENV):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{text}: not in the lock")
        elif not req.specifier.contains(pins[name][0], prereleases=True):
            problems.append(f"{text}: lock pins {pins[name][0]}")
    return problems


def test_every_lock_entry_is_an_exact_pin_with_sha256_hashes():
    """pip install --require-hashes needs ==pins and at least one sha256 for every line."""
    for lock in (RUNTIME_LOCK, TEST_LOCK):
        pins = read_lock(lock)
        assert pins, f"{lock.name} is empty"
        for name, (_, hashes) in pins.items():
            assert hashes, f"{lock.name}: {name} has no --hash"
            assert all(h.startswith("sha256:") and len(h) == len("sha256:") + 64 for h in hashes), name


def test_runtime_lock_satisfies_every_declared_dependency():
    """Each [project].dependencies entry is pinned in requirements.lock at a version its specifier allows."""
    assert unmet(PYPROJECT["project"]["dependencies"], read_lock(RUNTIME_LOCK)) == [], "run bin/lock"


def test_test_lock_satisfies_dependencies_and_the_test_extra():
    """requirements-test.lock also covers [project.optional-dependencies].test."""
    declared = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]
    assert unmet(declared, read_lock(TEST_LOCK)) == [], "run bin/lock"


def test_test_lock_pins_what_the_image_ships_at_the_same_versions():
    """CI tests exactly the runtime versions the Docker image installs."""
    runtime, test = read_lock(RUNTIME_LOCK), read_lock(TEST_LOCK)
    differ = {n: (str(v), str(test[n][0]) if n in test else None) for n, (v, _) in runtime.items()
              if n not in test or test[n][0] != v}
    assert differ == {}, f"(requirements.lock, requirements-test.lock) disagree: {differ}; run bin/lock"


def test_locks_pin_the_installer_and_a_build_backend_the_project_accepts():
    """`pip install --no-deps --no-build-isolation -e .` after the lock needs the locked setuptools to build us."""
    for lock in (RUNTIME_LOCK, TEST_LOCK):
        pins = read_lock(lock)
        assert unmet(PYPROJECT["build-system"]["requires"], pins) == [], lock.name
        assert "pip" in pins, f"{lock.name} does not pin pip"


# --- pip-audit -----------------------------------------------------------------------------------------------

def run_pip_audit(requirements: Path, service: str, timeout: float,
                  osv_url: str | None = None) -> tuple[dict | None, str]:
    """pip-audit's JSON report for a pinned requirements file, or (None, why there is none)."""
    cmd = [sys.executable, "-m", "pip_audit", "-r", str(requirements), "--no-deps", "--disable-pip",
           "-s", service, "-f", "json", "--progress-spinner", "off", "--timeout", "10"]
    if osv_url:
        cmd += ["--osv-url", osv_url]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        return None, f"no answer within {timeout:.0f} s"
    try:
        return json.loads(proc.stdout), ""
    except json.JSONDecodeError:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}, no output"])[-1]
        return None, last[:300]


def classify(report: dict) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """(vulnerable {name: what}, unaudited {name: skip reason}, audited-clean names) from a pip-audit JSON report."""
    vulnerable, unaudited, clean = {}, {}, set()
    for dep in report.get("dependencies", []):
        name = canonicalize_name(dep["name"])
        if "skip_reason" in dep:
            unaudited[name] = dep["skip_reason"]
        elif dep.get("vulns"):
            found = "; ".join(f"{'/'.join([v['id'], *v.get('aliases', [])])} "
                              f"(fixed in {', '.join(v.get('fix_versions') or ['-'])})" for v in dep["vulns"])
            vulnerable[name] = f"{dep['name']} {dep.get('version')}: {found}"
        else:
            clean.add(name)
    return vulnerable, unaudited, clean


def audit(requirements: Path, services=AUDIT_SERVICES, budget: float = AUDIT_BUDGET_S, osv_url: str | None = None):
    """Ask each service in turn until every pinned package has an answer.

    Returns (vulnerable, unaudited, notes): a package counts as audited once any service answered for it.
    """
    deadline = time.monotonic() + budget
    pinned = set(read_lock(requirements)) if requirements.suffix == ".lock" else None
    vulnerable: dict[str, str] = {}
    audited: set[str] = set()
    unaudited: dict[str, str] = {}
    notes = []
    for service in services:
        remaining = deadline - time.monotonic()
        if remaining < 2:
            notes.append(f"{service}: not tried, audit budget of {budget:.0f} s spent")
            continue
        report, why = run_pip_audit(requirements, service, remaining, osv_url=osv_url)
        if report is None:
            notes.append(f"{service}: {why}")
            continue
        bad, skipped, clean = classify(report)
        vulnerable.update(bad)
        audited |= clean | set(bad)
        unaudited = {n: r for n, r in {**unaudited, **skipped}.items() if n not in audited}
        if pinned is not None:
            unaudited.update({n: "not in pip-audit's report" for n in pinned - audited - set(unaudited)})
        if skipped:
            example = next(iter(skipped.items()))
            notes.append(f"{service}: {len(skipped)} of {len(report.get('dependencies', []))} packages unaudited "
                         f"(e.g. {example[0]}: {example[1]})")
        if not unaudited:
            break
    if not audited and not unaudited and pinned:
        unaudited = {n: "no service answered" for n in pinned}
    return vulnerable, unaudited, notes


def test_pip_audit_finds_no_known_vulnerability_in_the_runtime_lock():
    """Fails on any advisory against a pinned runtime package; skips, saying why, where the data can't be had."""
    pytest.importorskip("pip_audit", reason="pip-audit is in the [test] extra; install it to audit")
    vulnerable, unaudited, notes = audit(RUNTIME_LOCK)
    assert vulnerable == {}, "known vulnerabilities in requirements.lock (raise the floor, then bin/lock):\n" + \
        "\n".join(vulnerable.values())
    if unaudited:
        pytest.skip(f"pip-audit could not audit {len(unaudited)} of {len(read_lock(RUNTIME_LOCK))} pinned packages "
                    f"(vulnerability data unreachable from here): " + "; ".join(notes))


class _FakeOSV(BaseHTTPRequestHandler):
    """Answers OSV /v1/query like api.osv.dev would, from a fixed table; anything else is a 503."""

    advisories: ClassVar[dict] = {("jinja2", "3.1.5"): [{
        "id": "GHSA-cpwx-vrp4-4pq7", "aliases": ["CVE-2025-27516"], "summary": "sandbox breakout through |attr",
        "affected": [{"package": {"name": "jinja2", "ecosystem": "PyPI"},
                      "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.1.6"}]}]}],
    }]}
    down = False

    def do_POST(self):
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.down:
            self.send_response(503)
            self.end_headers()
            return
        vulns = self.advisories.get((query["package"]["name"], query["version"]), [])
        body = json.dumps({"vulns": vulns} if vulns else {}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_osv():
    """A loopback OSV stand-in; yields (url, handler class) so a test can take it down."""
    pytest.importorskip("pip_audit", reason="pip-audit is in the [test] extra")
    handler = type("Handler", (_FakeOSV,), {"down": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/query", handler
    server.shutdown()
    server.server_close()


def test_the_audit_reports_a_vulnerable_pin_and_passes_a_clean_one(fake_osv, tmp_path):
    """End to end through the real pip-audit, against a loopback OSV: a known advisory is a failure, with its fix."""
    url, _ = fake_osv
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("jinja2==3.1.5\nmarkupsafe==3.0.2\n")
    vulnerable, unaudited, notes = audit(reqs, services=("osv",), budget=30, osv_url=url)
    assert set(vulnerable) == {"jinja2"}, notes
    assert "GHSA-cpwx-vrp4-4pq7" in vulnerable["jinja2"] and "3.1.6" in vulnerable["jinja2"]
    assert unaudited == {}


def test_the_audit_never_passes_when_the_service_does_not_answer(fake_osv, tmp_path):
    """A vulnerability service that errors leaves every package unaudited (the test then skips, it never passes)."""
    url, handler = fake_osv
    handler.down = True
    lock = tmp_path / "requirements.lock"
    lock.write_text("jinja2==3.1.6 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    vulnerable, unaudited, notes = audit(lock, services=("osv",), budget=30, osv_url=url)
    assert vulnerable == {}
    assert set(unaudited) == {"jinja2"}
    assert notes and notes[0].startswith("osv:")
