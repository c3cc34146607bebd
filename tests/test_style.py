"""The code base stays `ruff` clean and `ruff format`ted (configuration in pyproject.toml)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from harness import PROJECT_ROOT


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff_is_clean(command: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


PACKAGE_ROOTS = ("server", "lakehouse", "views", "tracing", "migrations")


def test_each_package_indexes_its_modules() -> None:
    """Every package's docstring lists each of its modules and sub-packages on a line of its own
    (`    name  what it holds`), and nothing that is not there."""
    for root in PACKAGE_ROOTS:
        for init in (PROJECT_ROOT / root).rglob("__init__.py"):
            package = init.parent
            modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
            modules |= {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
            docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
            indexed = set(re.findall(r"^    (\w+)  ", docstring, re.MULTILINE))
            assert indexed == modules, f"{package.relative_to(PROJECT_ROOT)}: {sorted(indexed)} != {sorted(modules)}"


# What each folder may import of spanlake: server → lakehouse → views; tracing is imported by the server and
# the lakehouse (self-tracing) and imports nothing of spanlake.
ALLOWED_IMPORTS = {
    "server": {"server", "lakehouse", "views", "tracing"},
    "lakehouse": {"lakehouse", "views", "tracing"},
    "views": {"views"},
    "tracing": {"tracing"},
    "migrations": set(),
}


def _spanlake_imports(tree: ast.Module) -> set[str]:
    """The spanlake packages a module imports (`spanlake.<package>...` or `from spanlake import <package>`)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != "spanlake" else [f"spanlake.{a.name}" for a in node.names]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("spanlake.")}
    return found


def test_imports_follow_the_layers() -> None:
    for root, allowed in ALLOWED_IMPORTS.items():
        for path in (PROJECT_ROOT / root).rglob("*.py"):
            imported = _spanlake_imports(ast.parse(path.read_text()))
            assert imported <= allowed, f"{path.relative_to(PROJECT_ROOT)} imports {sorted(imported - allowed)}"
