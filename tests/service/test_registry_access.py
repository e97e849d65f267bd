"""Service code reaches the integration registry through Runtime.registry, not the module global."""

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"
# The runtime hands the registry out; the sandbox (dev tooling) has no runtime to ask.
ALLOWED = {SERVICE / "runtime.py"}


def _imports_registry(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "integrations":
            if any(alias.name == "REGISTRY" for alias in node.names):
                return True
    return False


def test_only_the_runtime_imports_the_registry():
    offenders = [str(path.relative_to(SERVICE.parent)) for path in sorted(SERVICE.rglob("*.py"))
                 if path not in ALLOWED and SERVICE / "sandbox" not in path.parents and _imports_registry(path)]
    assert offenders == []
