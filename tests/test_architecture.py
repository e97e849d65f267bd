"""The layout's contracts (pyproject.toml [tool.importlinter]) hold, and they cannot go stale unnoticed."""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import service

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
RUFF = Path(sys.executable).with_name("ruff")


def test_import_contracts_hold():
    """lint-imports passes: workers -> service -> integrations, no Celery in service, no fakes in production."""
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_lint_and_import_order_are_clean():
    """ruff ([tool.ruff] in pyproject.toml: pyflakes, pycodestyle, import order) finds nothing in the code and tests."""
    result = subprocess.run([str(RUFF), "check", "--no-cache", "service", "workers", "integrations", "tests", "bench"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_every_production_module_is_checked_for_fake_imports():
    """A new top-level module of service/ must be added to the no-fakes contract (only service.sandbox is exempt)."""
    (contract,) = [c for c in CONTRACTS if c.get("forbidden_modules") == ["service.sandbox"]]
    children = {f"service.{info.name}" for info in pkgutil.iter_modules(service.__path__)}
    assert children - {"service.sandbox"} <= set(contract["source_modules"])


@pytest.mark.parametrize("line, source", [
    ("from workers import tasks", "service/queue.py"),
    ("from service.config import Settings", "integrations/http.py"),
    ("from service.sandbox.standins import slack", "service/engine/delivery.py"),
    ("import celery", "service/web/__init__.py"),
])
def test_a_forbidden_import_breaks_the_contracts(tmp_path, line, source):
    """Each contract fails when someone adds the import it forbids (checked on a copy of the tree)."""
    copy = tmp_path / "tree"
    for folder in ("service", "workers", "integrations"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    target = copy / source
    target.write_text(target.read_text() + f"\n{line}  # added by the contract test\n")
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=copy, capture_output=True, text=True,
                            timeout=300, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and "BROKEN" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]
