"""The deployment files as the tests read them, and compose services run as local processes.

Docker is not needed: `Dockerfile` and `docker-compose.yml` are parsed, and each spanlake service runs
its exact command (the image's entrypoint + the service's command) with its exact environment (image
ENV, then env files, then `environment:`). Only what differs between containers and this machine is
replaced: compose host names and ports by the loopback servers of the test, listen ports by free ones,
the bind address by 127.0.0.1, and container paths (the virtualenv, HOME, the data directory, /tmp)
by this virtualenv and fresh directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from harness import PROJECT_ROOT, free_port, stop_process

PGSERVER_BIN = Path(importlib.util.find_spec("pgserver").submodule_search_locations[0]) / "pginstall" / "bin"


# -- Dockerfile -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, COPY, ENV, ...
    args: str
    stage: int  # index of the FROM this instruction belongs to


def read_dockerfile(path: Path) -> list[Instruction]:
    """The instructions in order, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


def exec_form(args: str) -> list[str]:
    """A JSON-array instruction argument (exec form); the shell form is refused."""
    value = json.loads(args)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"expected a JSON list of strings (exec form), got {args!r}")
    return value


@dataclass(frozen=True)
class Dockerfile:
    instructions: list[Instruction]

    @classmethod
    def read(cls, path: Path = PROJECT_ROOT / "Dockerfile") -> Dockerfile:
        return cls(read_dockerfile(path))

    @property
    def runtime(self) -> list[Instruction]:
        """The instructions of the final stage (the image that runs)."""
        last = self.instructions[-1].stage
        return [i for i in self.instructions if i.stage == last]

    def last(self, keyword: str) -> Instruction:
        return [i for i in self.runtime if i.keyword == keyword][-1]

    @property
    def entrypoint(self) -> list[str]:
        return exec_form(self.last("ENTRYPOINT").args)

    @property
    def cmd(self) -> list[str]:
        return exec_form(self.last("CMD").args)

    @property
    def env(self) -> dict[str, str]:
        """The final stage's ENV (key=value form; no variable expansion, so none may be used)."""
        env: dict[str, str] = {}
        for instruction in self.runtime:
            if instruction.keyword == "ENV":
                for pair in shlex.split(instruction.args):
                    key, sep, value = pair.partition("=")
                    if not sep or "$" in value:
                        raise ValueError(f"ENV {pair!r}: use key=value without variables")
                    env[key] = value
        return env

    @property
    def healthcheck(self) -> list[str]:
        """The HEALTHCHECK command (exec form), options dropped."""
        _, _, command = self.last("HEALTHCHECK").args.partition("CMD ")
        return exec_form(command)

    def copies(self) -> list[tuple[list[str], str]]:
        """(sources, destination) of each COPY from the build context (not `--from` another stage)."""
        found = []
        for instruction in self.instructions:
            if instruction.keyword == "COPY" and "--from=" not in instruction.args:
                *sources, destination = shlex.split(instruction.args)
                found.append((sources, destination))
        return found


def dockerignore_patterns(path: Path = PROJECT_ROOT / ".dockerignore") -> list[re.Pattern[str]]:
    """The patterns of .dockerignore as regexes over context-relative paths (Docker's syntax: paths
    from the context root, `*` within a name, `**` across directories; `!` exceptions are refused)."""
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            raise ValueError(f".dockerignore exception {line!r} is not supported by this reader")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", line.strip("/")):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        patterns.append(re.compile(regex + r"\Z"))
    return patterns


def is_ignored(relative: str, patterns: list[re.Pattern[str]]) -> bool:
    """True if the path or one of its parent directories matches a pattern (then Docker leaves it out)."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(p.match(prefix) for p in patterns for prefix in prefixes)


def build_context_files(dockerfile: Dockerfile, root: Path = PROJECT_ROOT) -> set[str]:
    """Context-relative paths of the files the Dockerfile's COPY instructions bring into the image."""
    patterns = dockerignore_patterns(root / ".dockerignore")
    files: set[str] = set()
    for sources, _ in dockerfile.copies():
        for source in sources:
            path = root / source
            candidates = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            for candidate in candidates:
                relative = candidate.relative_to(root).as_posix()
                if not is_ignored(relative, patterns):
                    files.add(relative)
    return files


# -- docker-compose.yml ---------------------------------------------------------------------------


def load_compose(path: Path = PROJECT_ROOT / "docker-compose.yml") -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def read_env_file(path: Path) -> dict[str, str]:
    """A compose env file: KEY=VALUE lines; '...' is literal, "..." takes no escapes here (refused)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path.name}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif value.startswith(("'", '"')) or "$" in value or " #" in value:
            raise ValueError(f"{path.name}:{number}: quote values with '...' (literal) only")
        values[key.strip()] = value
    return values


def service_environment(service: dict[str, Any], compose_dir: Path = PROJECT_ROOT) -> dict[str, str]:
    """What compose puts in the container on top of the image ENV: env files in order (a later file
    wins; `required: false` ones only if present), then `environment:`."""
    env: dict[str, str] = {}
    entries = service.get("env_file", [])
    for entry in [entries] if isinstance(entries, str | dict) else entries:
        spec = {"path": entry} if isinstance(entry, str) else entry
        path = compose_dir / spec["path"]
        if path.exists() or spec.get("required", True):
            env.update(read_env_file(path))
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    for key, value in environment.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if "$" in text:
            raise ValueError(f"{key}: compose would interpolate {text!r}; use literal values")
        env[key] = text
    return env


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    """The service's health check as an argv (exec form `CMD`, or `CMD-SHELL` through /bin/sh)."""
    test = service["healthcheck"]["test"]
    if test[0] == "CMD":
        return [a.replace("$$", "$") for a in test[1:]]
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1].replace("$$", "$")]
    raise ValueError(f"unsupported health check {test!r}")


def spanlake_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the spanlake image."""
    return {name: s for name, s in compose["services"].items() if "build" in s}


def replace_all(env: dict[str, str], replacements: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    """`env` with each key of `replacements` replaced in every value; also the keys that occurred."""
    used: set[str] = set()
    result = {}
    for key, value in env.items():
        for old, new in replacements.items():
            if old in value:
                used.add(old)
                value = value.replace(old, new)
        result[key] = value
    return result, used


# -- a compose service as a local process ---------------------------------------------------------


@dataclass
class LocalService:
    """One compose service run here: its argv and environment, with fresh HOME, data dir and /tmp."""

    name: str
    argv: list[str]
    env: dict[str, str]
    root: Path  # holds the service's local directories and its log
    healthcheck: list[str] | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def local_dirs(self) -> list[Path]:
        return [self.root / "home", self.root / "data", self.root / "tmp"]

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.name}.log"

    def start(self) -> LocalService:
        for directory in self.local_dirs:
            directory.mkdir(parents=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=self.root / "data", stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_text()}")

    def run_healthcheck(self, argv: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        """Runs a health check command in the service's environment, as Docker runs it in the container."""
        return subprocess.run(
            argv or self.healthcheck or [],
            env=self.env,
            cwd=self.root / "data",
            capture_output=True,
            text=True,
            timeout=30,
        )

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            if self.run_healthcheck().returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not healthy after {timeout}s:\n{self.log_text()}")

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            if text in self.log_text():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not print {text!r} in {timeout}s:\n{self.log_text()}")

    def stop(self) -> None:
        stop_process(self.process)

    def files_written_locally(self) -> list[str]:
        """Every file under the service's HOME, data directory (its working directory) and /tmp."""
        return sorted(str(p.relative_to(self.root)) for d in self.local_dirs for p in d.rglob("*"))


def local_service(
    name: str, compose: dict[str, Any], dockerfile: Dockerfile, hosts: dict[str, str], root: Path
) -> LocalService:
    """The compose service `name` as a local process (not started). `hosts` maps each compose
    `host:port` used in URLs to the loopback server standing in for it; each must occur."""
    service = compose["services"][name]
    root = root / name
    paths = {
        "/opt/spanlake/bin": os.path.dirname(os.path.abspath(sys.executable)),
        "/home/spanlake": str(root / "home"),
        "/var/lib/spanlake": str(root / "data"),
    }
    image_env, used_paths = replace_all(dockerfile.env, paths)
    if used_paths != set(paths):
        raise AssertionError(f"image ENV does not use the container paths {set(paths) - used_paths}")
    compose_env, used = replace_all(service_environment(service), {**hosts, **paths})
    if not set(hosts) <= used:
        raise AssertionError(f"{name}: its environment does not name {set(hosts) - used}")
    env = {
        **image_env,
        **compose_env,
        "TMPDIR": str(root / "tmp"),
        # Servers in tests listen on loopback ports only; the compose value is 0.0.0.0.
        "SPANLAKE_HOST": "127.0.0.1",
        "SPANLAKE_HTTP_PORT": str(free_port()),
        "SPANLAKE_FLIGHTSQL_PORT": str(free_port()),
    }
    command = service.get("command", dockerfile.cmd)
    argv = dockerfile.entrypoint + (shlex.split(command) if isinstance(command, str) else command)
    check = healthcheck_argv(service) if not service.get("healthcheck", {}).get("disable") else None
    return LocalService(name, argv, env, root, check)


# -- PostgreSQL as the official image sets it up --------------------------------------------------


class ComposePostgres:
    """A PostgreSQL (pgserver's binaries) configured as the `postgres` image configures itself from
    POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB: that superuser with that password (SCRAM) over
    TCP, that database. It listens on 127.0.0.1 on a free port, standing in for `postgres:5432`."""

    def __init__(self, environment: dict[str, str]) -> None:
        self.user = environment["POSTGRES_USER"]
        self.password = environment["POSTGRES_PASSWORD"]
        self.database = environment.get("POSTGRES_DB", self.user)
        self.port = free_port()
        # A short path: the server's socket lives here too (socket paths are limited to ~100 bytes).
        self.dir = Path(tempfile.mkdtemp(prefix="spanlake-compose-pg-"))
        self._os_user = _postgres_os_user()
        self._pgdata = self.dir / "data"
        self._start()

    @property
    def url(self) -> str:
        return (
            f"postgresql://{urllib.parse.quote(self.user)}:{urllib.parse.quote(self.password)}"
            f"@127.0.0.1:{self.port}/{self.database}"
        )

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [str(PGSERVER_BIN / tool), *args], check=True, capture_output=True, timeout=60, user=self._os_user
        )

    def _start(self) -> None:
        password_file = self.dir / "password"
        password_file.write_text(self.password)
        if self._os_user is not None:
            for path in (self.dir, password_file):
                shutil.chown(path, self._os_user)
        self._run(
            "initdb",
            "-D",
            str(self._pgdata),
            "-U",
            self.user,
            f"--pwfile={password_file}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
        )
        password_file.unlink()
        self._run(
            "pg_ctl",
            "-D",
            str(self._pgdata),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.dir}",
            "start",
        )
        asyncio.run(self._create_database())

    async def _create_database(self) -> None:
        admin_url = self.url.rsplit("/", 1)[0] + "/postgres"
        conn = await asyncpg.connect(admin_url)
        try:
            if self.database != "postgres":
                await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self._pgdata), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def _postgres_os_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as pgserver's unprivileged user."""
    if os.geteuid() != 0:
        return None
    from pgserver.utils import ensure_user_exists

    ensure_user_exists("pgserver")
    return "pgserver"
