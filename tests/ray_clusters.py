"""Real Ray clusters for the tests: an isolated home and Ray temporary folder, nodes started by `ray start`
on loopback only, stopped by the ids of the processes started here.

Loopback: Ray swaps 127.0.0.1 (and "localhost") for the machine's network address, as a node or head
address, in `ray start` and `ray.init` alike; any other 127.0.0.0/8 address it keeps. So the nodes
here use 127.0.0.2, and `assert_loopback` checks every address Ray reports before a job runs.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOOPBACK = "127.0.0.2"  # not 127.0.0.1: Ray would advertise and dial the network address instead
RAY_ENV = ("HOME", "RAY_TMPDIR", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 5  # a node drains in a second, but a head after an embed job may wait out Ray's 30 s


@contextlib.contextmanager
def isolated_ray() -> Iterator[Path]:
    """Gives a folder holding `home/` (HOME: Ray's token file goes there, never into the real home) and `tmp/`
    (RAY_TMPDIR: sessions and the bootstrap file), with Ray's address and authentication settings unset;
    all restored after, with Ray's cached authentication state."""
    root = Path(tempfile.mkdtemp(prefix="er", dir="/tmp"))  # short: Ray's socket paths live under it
    (root / "home").mkdir()
    (root / "tmp").mkdir()
    saved = {name: os.environ.get(name) for name in RAY_ENV}
    for name in RAY_ENV:
        os.environ.pop(name, None)
    os.environ.update(HOME=str(root / "home"), RAY_TMPDIR=str(root / "tmp"))
    try:
        yield root
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_ray_auth()
        shutil.rmtree(root, ignore_errors=True)


def reset_ray_auth() -> None:
    """Has Ray read its authentication settings again and drop its cached token (Ray's own order)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def write_token(home: Path) -> str:
    """Gives a new token, written where `ray start --head` looks for one (HOME/.ray/auth_token)."""
    token = secrets.token_hex(32)
    (home / ".ray").mkdir(exist_ok=True)
    (home / ".ray" / "auth_token").write_text(token)
    return token


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class RayStartCluster:
    """A head and more nodes, each a `ray start --block` process (in its own process group) of this test run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.nodes: list[subprocess.Popen] = []

    def start_head(self, cpus: int) -> None:
        self._start(["--head", "--port", str(self.port), "--include-dashboard", "false"], cpus, {})

    def add_node(self, cpus: int) -> None:
        # an address given by hand: Ray sends this machine's token only when told to
        mode = {"RAY_AUTH_MODE": "token"} if (Path(os.environ["HOME"]) / ".ray" / "auth_token").exists() else {}
        self._start(["--address", self.address], cpus, mode)

    def _start(self, args: list[str], cpus: int, env: dict) -> None:
        log = self.root / f"node{len(self.nodes)}.log"
        ray = Path(sys.executable).with_name("ray")
        command = [str(ray), "start", *args, "--node-ip-address", LOOPBACK, "--num-cpus", str(cpus),
                   "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats", "--block"]
        with log.open("w") as out:
            node = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                    start_new_session=True)
        self.nodes.append(node)
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in log.read_text():
            if node.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"`{' '.join(command)}` did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stops the nodes: SIGTERM to each `ray start --block` (it drains its node and stops what it started),
        then SIGKILL to what is left of each one's process group."""
        for node in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGTERM)  # not its group: a GCS stopped first makes the drain wait 30 s
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)
        self.nodes.clear()


def assert_loopback(ray, bootstrap: Path | None = None) -> None:
    """Fails unless the driver's GCS address, every node Ray reports and Ray's bootstrap file (if given) name
    127.0.0.0/8 addresses."""
    named = [bootstrap.read_text().strip()] if bootstrap else []
    named.append(ray.get_runtime_context().gcs_address)
    addresses = [a.rpartition(":")[0] for a in named] + [node["NodeManagerAddress"] for node in ray.nodes()]
    outside = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
    assert not outside, f"Ray reports addresses outside 127.0.0.0/8: {outside} (all: {addresses})"
