"""A two-node Ray cluster on 127.0.0.1 for the query-cluster tests, torn down by its process ids.

The nodes run the commands of docker-compose.cluster.yml's `ray-head` and `ray-worker` services, with
free loopback ports in place of the compose network's, plus what one shared machine needs (a CPU
each, a small object store, one temp dir). Each node is a `ray start --block` process in its own
session: its Ray daemons are its children, so killing the session's process group stops every
process the node started, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from harness import PROJECT_ROOT, free_port, wait_until

_RAY = str(Path(sys.executable).with_name("ray"))
_LOCAL_FLAGS = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000"]


def compose_command(service: str) -> list[str]:
    """A Ray service's command in docker-compose.cluster.yml."""
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.cluster.yml").read_text())
    return list(compose["services"][service]["command"])


def _replaced(argv: list[str], old: str, new: str) -> list[str]:
    replaced = [arg.replace(old, new) for arg in argv]
    assert replaced != argv, f"{old} not in {argv}"
    return replaced


class RayCluster:
    """A head and one worker node. The tests' servers run on this machine, a node of the cluster, so
    they join it as drivers through the head's address (`gcs_address`); `client_address` is the Ray
    Client form (ray://) for processes off the cluster."""

    def __init__(self, temp_dir: Path) -> None:
        self.gcs_port = free_port()
        self.client_port = free_port()
        self.temp_dir = temp_dir
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "DAFT_PROGRESS_BAR": "0"}
        head = _replaced(compose_command("ray-head"), "--port=6379", f"--port={self.gcs_port}")
        self.head = self._node(
            "head", [*head, f"--ray-client-server-port={self.client_port}", f"--temp-dir={temp_dir}"]
        )
        wait_until(lambda: self._listening(self.gcs_port), 90, "the Ray head")
        worker = _replaced(compose_command("ray-worker"), "ray-head:6379", self.gcs_address)
        self.worker = self._node("worker", worker)
        wait_until(lambda: self._listening(self.client_port), 90, "the Ray client server")

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def _node(self, name: str, flags: list[str]) -> subprocess.Popen:
        log = open(self.temp_dir.parent / f"ray-{name}.log", "wb")  # noqa: SIM115 - the node's lifetime
        return subprocess.Popen(
            [_RAY, *flags, *_LOCAL_FLAGS],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _listening(self, port: int) -> bool:
        for node in (self.head, getattr(self, "worker", None)):
            if node is not None and node.poll() is not None:
                raise RuntimeError(f"a Ray node exited with {node.returncode}")
        import socket

        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    def kill_worker(self) -> None:
        """The worker node dies at once, daemons and all (SIGKILL to its process group)."""
        _kill_group(self.worker, signal.SIGKILL)

    def stop(self) -> None:
        for node in (self.worker, self.head):
            _kill_group(node, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for node in (self.worker, self.head):
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(max(0.1, deadline - time.monotonic()))
            _kill_group(node, signal.SIGKILL)


def _kill_group(node: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, sig)
