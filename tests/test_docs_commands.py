"""Every `spanlake ...` command and every `--flag` written in README.md, docs/ and the texts spanlake
prints is parsed by the real command line, so the docs and the code cannot drift apart.

Commands come from inline code spans that start with `spanlake ` and from the lines of fenced code
blocks that run `spanlake` (also as `.venv/bin/spanlake` or the `spanlake` image of `docker run`).
Placeholders are read as a user reads them: `[optional parts]` are tried with and without,
`a|b|c` one choice at a time, `…`/`NAME`/`$PID` are values. A span naming a command alone
(`spanlake query`) must name an existing command; one with arguments must parse.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from deployment_support import load_compose, spanlake_services
from harness import PROJECT_ROOT

from spanlake.server.cli import build_parser
from spanlake.server.startup import GETTING_STARTED

DOCUMENTS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)
_SPAN = re.compile(r"`([^`\n]+)`")
_RUNS_SPANLAKE = re.compile(r"^(?:\S*/)?spanlake$")


# Options of `docker run` / `docker compose run` that take a value (the rest are switches).
_DOCKER_VALUE_OPTIONS = {"-e", "--env", "-p", "--publish", "-v", "--volume", "--name", "--env-file", "-w", "--network"}


def _as_spanlake_command(segment: str) -> str | None:
    """`spanlake ARGS` for a shell segment that runs spanlake (directly, or as the image of
    `docker run`, or a spanlake service of `docker compose run`), else None. ARGS stay as written."""
    try:
        words = shlex.split(segment)
    except ValueError:
        return None
    if words and _RUNS_SPANLAKE.match(words[0]):
        if words[1:2] == ["import"]:  # `from spanlake import tracing`, split at a `;`
            return None
        return f"spanlake {segment.partition(' ')[2].strip()}".strip()
    if words[:2] == ["docker", "run"] or words[:3] == ["docker", "compose", "run"]:
        rest = words[3:] if words[1] == "compose" else words[2:]
        while rest and rest[0].startswith("-"):
            rest = rest[2:] if rest[0] in _DOCKER_VALUE_OPTIONS else rest[1:]
        if rest and (rest[0] == "spanlake" or rest[0] in _spanlake_services()):
            after = (segment + " ").split(f" {rest[0]} ", 1)[1]  # the arguments as written
            return f"spanlake {after.strip()}".strip()
    return None


def _spanlake_services() -> set[str]:
    return set(spanlake_services(load_compose()))


def _commands_in_code_blocks(text: str) -> list[str]:
    commands = []
    for block in _FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            for segment in re.split(r"&&|;| \| ", line.split(" #", 1)[0]):
                command = _as_spanlake_command(segment.strip())
                if command is not None:
                    commands.append(command)
    return commands


def documented() -> list[tuple[str, str]]:
    """(where, text) of every command and flag span of the docs and of the getting-started text."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text()
        where = path.relative_to(PROJECT_ROOT).as_posix()
        found += [(where, command) for command in _commands_in_code_blocks(text)]
        for span in _SPAN.findall(_FENCE.sub("", text)):
            if span.startswith("--"):
                found.append((where, span))
            elif span.startswith(("spanlake ", "docker ")) and (command := _as_spanlake_command(span)):
                found.append((where, command))
    found += [("spanlake (getting started)", line.split("  ")[0]) for line in _getting_started_commands()]
    return found


def _getting_started_commands() -> list[str]:
    return [line.strip() for line in GETTING_STARTED.splitlines() if line.startswith("  spanlake")]


def _variants(text: str) -> list[list[str]]:
    """The argument lists a documented command stands for (optional parts, alternatives)."""
    text = text.replace("…", "VALUE").replace("...", "VALUE")
    pieces = re.split(r"\[([^\]]*)\]", text)  # even indexes: always there; odd: optional parts
    variants = []
    for included in itertools.product((False, True), repeat=len(pieces) // 2):
        optional = [piece if keep else "" for piece, keep in zip(pieces[1::2], included, strict=True)]
        chosen = "".join(p for pair in itertools.zip_longest(pieces[0::2], optional, fillvalue="") for p in pair)
        words = shlex.split(chosen)
        choices = [word.split("|") if "|" in word and not word.startswith(("'", '"')) else [word] for word in words]
        variants += [list(option) for option in itertools.product(*choices)]
    return variants


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    [commands] = [a for a in build_parser()._actions if a.dest == "command"]
    return dict(commands.choices)


def _parse_error(argv: list[str]) -> str | None:
    """argparse's complaint about `spanlake <argv>`, or None when it parses."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exit_:
            return None if exit_.code == 0 else stderr.getvalue().strip().splitlines()[-1]
    return None


def _flag_error(words: list[str]) -> str | None:
    """A documented flag (with its value, if written) must parse on some command that has it."""
    having = [name for name, sub in _subcommands().items() if words[0] in sub._option_string_actions]
    if not having:
        return f"no command has {words[0]}"
    action = _subcommands()[having[0]]._option_string_actions[words[0]]
    if len(words) == 1 and action.nargs != 0:
        return None  # a flag named without its value (a settings table): that it exists is the point
    errors = [_parse_error([name, *words, *_required_arguments(name)]) for name in having]
    return None if None in errors else errors[0]


def _required_arguments(command: str) -> list[str]:
    sub = _subcommands()[command]
    positional = [a for a in sub._actions if not a.option_strings and a.dest != "help"]
    required = [a for a in sub._actions if a.option_strings and a.required]
    return ["VALUE" for _ in positional] + [w for a in required for w in (a.option_strings[0], "VALUE")]


def documented_errors() -> list[str]:
    errors = []
    for where, text in documented():
        for words in _variants(text):
            if words[0].startswith("--"):
                error = _flag_error(words)
            elif len(words) == 2 and words[1] in _subcommands():
                error = None  # `spanlake query`: the command's name, in a sentence about it
            else:
                error = _parse_error(words[1:])
            if error:
                errors.append(f"{where}: `{' '.join(words)}`: {error}")
    return errors


def test_the_docs_have_commands_and_flags_to_check() -> None:
    texts = {text for _, text in documented()}
    assert {"spanlake serve", "spanlake api-key NAME [--admin]", "--disable-auth"} <= texts
    assert any(text.startswith('spanlake query "SELECT count(*) FROM log_entries" --begin') for text in texts)
    assert "spanlake query --help" in texts  # from `docker run --rm spanlake query --help`
    assert "spanlake api-key NAME [--admin]" in {t for w, t in documented() if w == "docs/deployment.md"}
    assert len(texts) > 25


def test_every_documented_command_and_flag_parses() -> None:
    assert documented_errors() == []


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("spanlake api-key create NAME", "unrecognized arguments: NAME"),
        ("--self-tracing false", "unrecognized arguments: false"),
        ("spanlake maintain --http-port 9000", "unrecognized arguments: --http-port 9000"),
        ("--no-such-flag", "no command has --no-such-flag"),
    ],
)
def test_the_check_catches_wrong_commands(text: str, error: str) -> None:
    [words] = _variants(text)
    found = _flag_error(words) if words[0].startswith("--") else _parse_error(words[1:])
    assert found is not None and error in found


def test_the_refusal_to_listen_without_keys_names_a_command_that_parses(database_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPANLAKE_")}
    flags = ["--host", "0.0.0.0", "--database-url", database_url, "--object-store-uri", tmp_path.as_uri()]
    # Port 0: the refusal comes before any port is bound, and a probed free port on 0.0.0.0 can be taken by
    # another test's server meanwhile (seen under pytest-xdist: "port … already in use").
    ports = ["--http-port", "0", "--flightsql-port", "0", "--no-self-tracing"]
    refused = subprocess.run(
        [sys.executable, "-m", "spanlake.server.cli", "serve", *flags, *ports],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "refusing to listen on 0.0.0.0 without API keys" in refused.stderr
    [command] = re.findall(r"'(spanlake [^']+)'", refused.stderr)
    assert _parse_error(shlex.split(command)[1:]) is None
