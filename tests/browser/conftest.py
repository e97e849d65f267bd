"""Browser fixtures: Debian's chromium driven by Playwright against pbxrelay running as real processes.

The deployment (web through gunicorn, a Celery worker, the scheduler; real Redis, SQLite) and the sandbox's
vendor stand-ins over real HTTP are started once per session; each test takes fresh accounts from it so tests
never see each other's data. The browser is Debian's chromium (``PBXRELAY_CHROMIUM``, default
``/usr/bin/chromium``): Playwright never downloads one. Without it the suite skips, except on CI (``CI=true``)
where it fails. Screenshots go to ``tests/browser/artifacts/`` (or ``$PBXRELAY_SCREENSHOTS``).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from service import sandbox
from tests.harness import Service

DEFAULT_CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
OPERATOR_EMAIL = "operator@example.com"
PASSWORD = "browser test passphrase"
TIMEZONE = "America/New_York"


def chromium_path() -> str | None:
    """The chromium binary to drive (PBXRELAY_CHROMIUM, else Debian's), or None when it is not there."""
    path = os.environ.get("PBXRELAY_CHROMIUM", DEFAULT_CHROMIUM)
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else shutil.which(path)


def screenshots_dir() -> Path:
    """Where screenshots go: $PBXRELAY_SCREENSHOTS, else tests/browser/artifacts (gitignored)."""
    folder = Path(os.environ.get("PBXRELAY_SCREENSHOTS") or ARTIFACTS)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page, name: str) -> Path:
    """Save a full-page PNG of ``page`` as ``<name>.png`` in the screenshots folder; returns its path."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "page"
    path = screenshots_dir() / f"{safe}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; skips the browser suite with a message when absent, fails instead on CI."""
    path = chromium_path()
    if path is None:
        wanted = os.environ.get("PBXRELAY_CHROMIUM", DEFAULT_CHROMIUM)
        if os.environ.get("CI"):
            pytest.fail(f"chromium is required on CI but {wanted} is missing (Debian: apt-get install chromium)")
        pytest.skip(f"browser tests need chromium at {wanted} (Debian: apt-get install chromium; "
                    "or set PBXRELAY_CHROMIUM)")
    return path


@pytest.fixture(scope="session")
def browser(chromium):
    """A headless chromium launched by Playwright from the system binary (no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@dataclass
class Deployment:
    """pbxrelay running as processes next to the sandbox's stand-ins, with an operator who can sign in."""

    svc: Service
    box: sandbox.Sandbox
    operator_email: str = OPERATOR_EMAIL
    password: str = PASSWORD
    accounts: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The service's base URL (the console is under /console)."""
        return self.svc.url

    @property
    def slack(self):
        """The Slack stand-in's state (messages, faults, tokens)."""
        return self.box.states["slack"]

    def new_account(self, name: str = "Acme Dental") -> SimpleNamespace:
        """A fresh account (its own id, so tests never share data): account_id, hook_url, crm_hook_url."""
        account_id = uuid.uuid4().hex
        added = self.svc.add_account(account_id, name, TIMEZONE)
        self.accounts.append(account_id)
        return SimpleNamespace(**added)

    def invite(self, account_id: str, email: str, role: str) -> str:
        """A single-use invite link, made through the CLI as an operator would."""
        return self.svc.cli("users", "invite", account_id, email, "--role", role).stdout.strip()


@pytest.fixture(scope="session")
def deployment(tmp_path_factory, redis_url, chromium) -> Deployment:
    """The stand-ins and pbxrelay (web, worker, scheduler; SQLite, real Redis) with an operator account."""
    tmp = tmp_path_factory.mktemp("browser")
    box = sandbox.start("127.0.0.1", 0, var_dir=tmp / "sandbox")
    svc = Service(tmp, redis_url=redis_url, namespace=f"br{uuid.uuid4().hex[:8]}", env=box.env)
    try:
        svc.cli("migrate")
        svc.cli("users", "add", OPERATOR_EMAIL, "--operator", "--password-stdin", input=PASSWORD + "\n")
        svc.start_web()
        svc.start_worker(concurrency=2)
        svc.start_scheduler()
        yield Deployment(svc=svc, box=box)
    finally:
        svc.stop()
        box.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so the page fixture knows whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(request, browser, deployment):
    """A fresh browser context (no cookies) and page; a failing test leaves a screenshot of where it stood."""
    context = browser.new_context(base_url=deployment.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    new_page = context.new_page()
    yield new_page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        screenshot(new_page, f"FAILED-{request.node.name}")
    context.close()


def sign_in(page, email: str, password: str = PASSWORD, *, next_path: str | None = None) -> None:
    """Sign in through the real form and wait until the console has let us in."""
    page.goto("/console/login" + (f"?next={next_path}" if next_path else ""))
    page.fill("#email", email)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    if "/console/login" in page.url:
        raise AssertionError(f"sign-in as {email} failed: {page.inner_text('main')}")


@pytest.fixture
def operator_page(page, deployment):
    """A page signed in as the deployment's operator."""
    sign_in(page, deployment.operator_email, deployment.password)
    return page
