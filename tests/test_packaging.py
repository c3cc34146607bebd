"""The wheel that `pip install spanlake` installs: one `spanlake` namespace, every module and data file in it.

The repository keeps its packages in top-level folders (server/, lakehouse/, views/, tracing/,
migrations/) that pyproject.toml maps to `spanlake.<folder>` with an explicit `packages` list. The
editable install used by the other tests resolves modules straight from those folders, so it does
not notice a sub-package missing from that list, a data file outside `package-data`, or a mapping
that would put `server` or `lakehouse` at the top of site-packages. These tests build the real
wheel (once, from a temporary copy of the working tree, without network) and check that:

- site-packages receives only `spanlake` (a namespace package: no `spanlake/__init__.py`);
- every file of the five folders is in the wheel at `spanlake/<same path>`;
- the `spanlake` console script points at `spanlake.server.cli:main`;
- the unpacked wheel imports on its own, the editable install's finder taken out of the way,
  and `importlib.resources` finds the SQL migrations in it.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from harness import PROJECT_ROOT
from packaging.requirements import Requirement

from spanlake.lakehouse.migrate import available_migrations

PACKAGE_FOLDERS = ("server", "lakehouse", "views", "tracing", "migrations")
MIGRATIONS = PROJECT_ROOT / "migrations"

# Runs in a separate interpreter (`-I`: no PYTHONPATH, no cwd on sys.path) that still has the venv's
# site-packages for the dependencies. The setuptools editable finder that the venv's
# `__editable__*.pth` installed is removed first, so every `spanlake` import must come from the
# unpacked wheel given as argv[1]. Writes what it found as JSON to argv[2].
_IMPORT_CHECK = """
import importlib, importlib.resources, json, pkgutil, sys

unpacked, report_path = sys.argv[1], sys.argv[2]

def editable(obj):
    return "__editable__" in (getattr(obj, "__module__", None) or type(obj).__module__ or "")

sys.meta_path[:] = [finder for finder in sys.meta_path if not editable(finder)]
sys.path_hooks[:] = [hook for hook in sys.path_hooks if not editable(hook)]
sys.path[:] = [unpacked] + [entry for entry in sys.path if "__editable__" not in entry]
sys.path_importer_cache.clear()
importlib.invalidate_caches()

import spanlake
from spanlake import tracing
import spanlake.lakehouse, spanlake.migrations, spanlake.server, spanlake.views
from spanlake.lakehouse.migrate import available_migrations
from spanlake.server.cli import main

for module in pkgutil.walk_packages(spanlake.__path__, "spanlake."):
    importlib.import_module(module.name)

migrations = importlib.resources.files("spanlake.migrations")
report = {
    "editable_finders_left": [repr(finder) for finder in sys.meta_path if editable(finder)],
    "namespace_path": list(spanlake.__path__),
    "namespace_file": getattr(spanlake, "__file__", None),
    "tracing_file": tracing.__file__,
    "module_files": {name: getattr(module, "__file__", None) for name, module in sys.modules.items()
                     if name == "spanlake" or name.startswith("spanlake.")},
    "main_is_callable": callable(main),
    "migrations_dir": str(migrations),
    "migration_resources": sorted(entry.name for entry in migrations.iterdir() if entry.name.endswith(".sql")),
    "available_migrations": [migration.name for migration in available_migrations()],
}
with open(report_path, "w") as out:
    json.dump(report, out)
"""


def working_tree_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files of the working tree, as `git ls-files` paths."""
    result = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"the packaging tests enumerate files with git ls-files: {result.stderr.decode()}")
    paths = [path for path in result.stdout.decode().split("\0") if path]
    # --cached still lists files deleted from the working tree but not yet from the index.
    return [path for path in paths if (PROJECT_ROOT / path).is_file()]


def package_files() -> list[str]:
    """The working-tree files under the five package folders, without byte-code."""
    return [
        path
        for path in working_tree_files()
        if path.split("/", 1)[0] in PACKAGE_FOLDERS
        and "__pycache__" not in path.split("/")
        and not path.endswith(".pyc")
    ]


def missing_build_requirements() -> list[str]:
    """`[build-system].requires` entries that this interpreter (used without build isolation) does not satisfy."""
    requires = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    missing = []
    for text in requires:
        requirement = Requirement(text)
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{text} (not installed)")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{text} (installed: {version})")
    return missing


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once from a temporary copy of the working tree with the venv's setuptools."""
    missing = missing_build_requirements()
    if missing:
        pytest.fail(
            "the wheel is built without build isolation (no network), so the venv needs the build backend: "
            f"missing {', '.join(missing)}; add it to the `test` extras of pyproject.toml"
        )
    source = tmp_path_factory.mktemp("source")
    for path in working_tree_files():
        target = source / path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(PROJECT_ROOT / path, target)
        except FileNotFoundError:  # deleted by a concurrent edit since the listing
            continue
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    result = subprocess.run(
        [*command, "--disable-pip-version-check", "-w", str(out), str(source)],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def wheel_files(wheel_path: Path) -> set[str]:
    """Every file name in the wheel."""
    with zipfile.ZipFile(wheel_path) as wheel:
        return {name for name in wheel.namelist() if not name.endswith("/")}


@pytest.fixture(scope="module")
def dist_info(wheel_files: set[str]) -> str:
    """The wheel's `*.dist-info` directory name."""
    names = {name.split("/", 1)[0] for name in wheel_files if name.split("/", 1)[0].endswith(".dist-info")}
    assert len(names) == 1, names
    return names.pop()


@pytest.fixture(scope="module")
def unpacked_wheel(wheel_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel extracted into a temporary directory, as pip would lay it out in site-packages."""
    target = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(wheel_path) as wheel:
        wheel.extractall(target)
    return target.resolve()


def test_only_spanlake_lands_in_site_packages(wheel_path: Path, wheel_files: set[str], dist_info: str) -> None:
    """The wheel's only top-level name is the `spanlake` namespace package."""
    top_level = {name.split("/", 1)[0] for name in wheel_files if not name.startswith(f"{dist_info}/")}
    assert top_level == {"spanlake"}
    assert "spanlake/__init__.py" not in wheel_files, "spanlake must stay an implicit namespace package"
    if f"{dist_info}/top_level.txt" in wheel_files:
        with zipfile.ZipFile(wheel_path) as wheel:
            listed = wheel.read(f"{dist_info}/top_level.txt").decode().split()
        assert listed == ["spanlake"]


def test_every_python_module_is_in_the_wheel(wheel_files: set[str]) -> None:
    """Each .py file of the five folders is at spanlake/<path> (catches a sub-package missing from `packages`)."""
    modules = [path for path in package_files() if path.endswith(".py")]
    folders_with_modules = {path.split("/", 1)[0] for path in modules}
    assert folders_with_modules == set(PACKAGE_FOLDERS)
    missing = sorted(path for path in modules if f"spanlake/{path}" not in wheel_files)
    assert missing == [], "add their packages to [tool.setuptools] packages in pyproject.toml"


def test_every_migration_is_in_the_wheel(wheel_files: set[str]) -> None:
    """Each migrations/*.sql file is packaged in spanlake/migrations/."""
    sql_files = sorted(path.name for path in MIGRATIONS.glob("*.sql"))
    assert sql_files, "migrations/ has no .sql file"
    packaged = sorted(name.removeprefix("spanlake/migrations/") for name in wheel_files if name.endswith(".sql"))
    assert packaged == sql_files


def test_every_data_file_is_in_the_wheel(wheel_files: set[str]) -> None:
    """Every non-Python file of the five folders (SQL, future static web files) is packaged at spanlake/<path>."""
    data_files = [path for path in package_files() if not path.endswith(".py")]
    missing = sorted(path for path in data_files if f"spanlake/{path}" not in wheel_files)
    assert missing == [], "add them to [tool.setuptools.package-data] in pyproject.toml"


def test_console_script_entry_point(wheel_path: Path, dist_info: str) -> None:
    """The wheel's entry_points.txt maps the `spanlake` console script to spanlake.server.cli:main."""
    with zipfile.ZipFile(wheel_path) as wheel:
        text = wheel.read(f"{dist_info}/entry_points.txt").decode()
    entry_points = configparser.ConfigParser()
    entry_points.read_string(text)
    assert dict(entry_points["console_scripts"]) == {"spanlake": "spanlake.server.cli:main"}


def test_unpacked_wheel_imports_without_the_editable_install(
    unpacked_wheel: Path, wheel_files: set[str], tmp_path: Path
) -> None:
    """Every module imports from the unpacked wheel alone, and importlib.resources finds the migrations there."""
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-I", "-B", "-c", _IMPORT_CHECK, str(unpacked_wheel), str(report_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    root = unpacked_wheel / "spanlake"

    assert report["editable_finders_left"] == []
    assert report["namespace_file"] is None
    assert Path(report["namespace_path"][0]).resolve() == root
    assert Path(report["tracing_file"]).resolve() == root / "tracing" / "__init__.py"
    module_files = report["module_files"]
    outside = {
        name: file for name, file in module_files.items() if file and not Path(file).resolve().is_relative_to(root)
    }
    assert outside == {}
    packaged_modules = {
        name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in wheel_files
        if name.endswith(".py")
    }
    assert sorted(packaged_modules - set(module_files)) == []
    assert report["main_is_callable"] is True

    sql_files = sorted(path.name for path in MIGRATIONS.glob("*.sql"))
    assert Path(report["migrations_dir"]).resolve() == root / "migrations"
    assert report["migration_resources"] == sql_files
    assert report["available_migrations"] == sql_files


def test_available_migrations_match_the_repository() -> None:
    """In the editable install, available_migrations() returns every migrations/*.sql file, in order, with its text."""
    sql_files = sorted(MIGRATIONS.glob("*.sql"))
    assert sql_files, "migrations/ has no .sql file"
    migrations = available_migrations()
    assert [m.name for m in migrations] == [path.name for path in sql_files]
    assert [m.version for m in migrations] == list(range(1, len(sql_files) + 1))
    assert [m.sql for m in migrations] == [path.read_text() for path in sql_files]


def test_web_ui_static_files_are_in_the_wheel(wheel_files: set[str]) -> None:
    """The UI's scripts and stylesheet ship in the package (no build step, nothing fetched at run time)."""
    static = {path for path in package_files() if path.startswith("server/web/static/")}
    assert {"server/web/static/app.css", "server/web/static/app.js", "server/web/static/spantree.js"} <= static
    assert sorted(path for path in static if f"spanlake/{path}" not in wheel_files) == []
