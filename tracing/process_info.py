"""Who the instrumented process is, and its clock: the `insert_process` body.

Ticks are `time.perf_counter_ns()` (CLOCK_MONOTONIC on Linux), so `tsc_frequency` is exactly 1e9.
Wall-clock times of block boundaries are derived from ticks (start_time + elapsed ticks), which
keeps them consistent with how analytics convert ticks to time.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import platform
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import NamedTuple

import cbor2

TICKS_PER_SECOND = 1_000_000_000
now_ticks = time.perf_counter_ns
PARENT_PROCESS_ENV = "MICROMEGAS_TELEMETRY_PARENT_PROCESS"


class DualTime(NamedTuple):
    """One instant as absolute ticks and as ns since the Unix epoch."""

    ticks: int
    time_ns: int


def format_rfc3339_ns(ns: int) -> str:
    """ns since the epoch → '2024-05-01T12:00:00.123456789+00:00' (the micromegas sink's form)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}+00:00"


@dataclass(frozen=True)
class ProcessInfo:
    """The process description sent once per session (micromegas's ProcessInfo)."""

    process_id: uuid.UUID
    exe: str
    username: str
    realname: str
    computer: str
    distro: str
    cpu_brand: str
    tsc_frequency: int
    start_time_ns: int
    start_ticks: int
    parent_process_id: uuid.UUID | None
    properties: dict[str, str] = field(default_factory=dict)

    def dual_time(self, ticks: int) -> DualTime:
        """The instant `ticks` as ticks and as ns since the epoch, from the process's start time and TSC frequency."""
        return DualTime(ticks, self.start_time_ns + (ticks - self.start_ticks) * 1_000_000_000 // self.tsc_frequency)

    def to_wire(self) -> bytes:
        """The CBOR `ProcessInfo` map, keys in the Rust field order."""
        return cbor2.dumps(
            {
                "process_id": str(self.process_id),
                "exe": self.exe,
                "username": self.username,
                "realname": self.realname,
                "computer": self.computer,
                "distro": self.distro,
                "cpu_brand": self.cpu_brand,
                "tsc_frequency": self.tsc_frequency,
                "start_time": format_rfc3339_ns(self.start_time_ns),
                "start_ticks": self.start_ticks,
                "parent_process_id": str(self.parent_process_id) if self.parent_process_id else None,
                "properties": self.properties,
            }
        )


def make_process_info(exe: str | None = None, properties: dict[str, str] | None = None) -> ProcessInfo:
    """Describes this process now; `properties` are added to the defaults micromegas also sends."""
    start_ticks, start_time_ns = now_ticks(), time.time_ns()
    username = _username()
    info = {
        "exe": exe or _default_exe(),
        "username": username,
        "realname": _realname(username),
        "computer": socket.gethostname(),
        "distro": _distro(),
        "cpu_brand": _cpu_brand(),
    }
    defaults = info | {"logical_cpu_count": str(os.cpu_count() or 0), "python_version": platform.python_version()}
    return ProcessInfo(
        process_id=uuid.uuid4(),
        tsc_frequency=TICKS_PER_SECOND,
        start_time_ns=start_time_ns,
        start_ticks=start_ticks,
        parent_process_id=parent_process_from_env(),
        properties=defaults | {str(k): str(v) for k, v in (properties or {}).items()},
        **info,
    )


def parent_process_from_env() -> uuid.UUID | None:
    """`MICROMEGAS_TELEMETRY_PARENT_PROCESS` as a UUID; unset, empty or malformed ⇒ None."""
    value = os.environ.get(PARENT_PROCESS_ENV, "").strip()
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def _default_exe() -> str:
    script = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    return os.path.abspath(script) if script else sys.executable


def _username() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name and no USER variable (e.g. a container without passwd entry)
        return str(os.getuid()) if hasattr(os, "getuid") else ""


def _realname(username: str) -> str:
    try:
        import pwd

        gecos = pwd.getpwnam(username).pw_gecos.split(",")[0]
        return gecos or username
    except (ImportError, KeyError):
        return username


def _distro() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", platform.platform())
    except OSError:
        return platform.platform()


def _cpu_brand() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
