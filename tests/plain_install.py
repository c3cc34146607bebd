"""A Python environment like the README's plain install (`pip install -e .`, no test extras).

The test extras bring pandas in, and pyarrow quietly uses pandas when it is importable, which hid
that `spanlake query` needed it. `plain_install_venv(...)` builds a real venv whose site-packages
links exactly the distributions spanlake's own dependencies pull in (their transitive closure, read
from the installed metadata), taken from the test venv: no network, about a second, and what is
missing there is missing as after the README's install. A meta-path hook refusing `import pandas`
would hide one name only; this leaves out every test-only package, whatever its name.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

from packaging.requirements import Requirement


def plain_install_closure(distribution: str = "spanlake") -> set[str]:
    """Normalized names of every distribution the plain install of `distribution` pulls in."""
    seen: set[str] = set()
    pending = [distribution]
    while pending:
        name = _normalized(pending.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return seen


def plain_install_venv(target: Path) -> Path:
    """A venv at `target` holding exactly the plain install's distributions, linked from the running
    venv (spanlake itself stays the editable install of this tree); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    python = target / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    source = Path(sysconfig.get_paths()["purelib"])
    wanted = plain_install_closure()
    entries = {
        Path(file).parts[0]
        for dist in importlib.metadata.distributions(path=[str(source)])
        if _normalized(dist.metadata["Name"]) in wanted
        for file in dist.files or []
        if not Path(file).is_absolute() and Path(file).parts[0] != ".."
    }
    for entry in sorted(entries):
        if (source / entry).exists():
            (purelib / entry).symlink_to(source / entry)
    script = target / "bin" / "spanlake"  # the console script pip writes
    script.write_text(f"#!{python}\nimport sys\nfrom spanlake.server.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    return python


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
