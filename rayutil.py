"""What both Ray engines share: their settings, the import guard for the `ray` extra, the connection.

The embed job (`embed/ray_engine.py`) and the index build (`index/ray_build.py`) run on Ray; neither
imports the other. Ray itself is imported only where a job starts (`require_ray`), so without the
extra everything else works and `--engine ray` fails at once, naming the extra to install.

Joining a cluster is checked first, each check bounded (`CONNECT_TIMEOUT_S`), so that a job fails in
seconds with what happened and its fix rather than in Ray's retries: nothing at the address, the
cluster asking for a token this machine lacks or has wrong (Ray's token authentication, turned on by
`ray start` where `~/.ray/auth_token` exists), another Ray or Python version. Without an address a job
starts its own local Ray (or joins `RAY_ADDRESS`): never the cluster Ray's bootstrap file names, which
outlives a head killed without `ray stop`; `--ray-address auto` joins that one, once it answers.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import platform
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
INSTALL_HINT = 'pip install "emoreact[ray]"'
CONNECT_TIMEOUT_S = 5.0  # each check of a cluster (a port answering, Ray's GCS answering)
AUTH_MODE, TOKEN, TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"  # Ray's settings, read by Ray
DEFAULT_TOKEN = "~/.ray/auth_token"  # where `ray start --head` and `ray get-auth-token --generate` keep it
TOKEN_HINT = (f"copy the head's token (`ray get-auth-token` prints it there) into {DEFAULT_TOKEN}, or name its "
              f"file in {TOKEN_PATH}, or give it in {TOKEN}")


class EngineError(RuntimeError):
    """The Ray engine cannot run as asked (extra missing, cluster too small); the message says what to do."""


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide a Ray engine runs (the index build reads `address`, `workers`, `cpus_per_worker`)."""

    address: str | None = None  # None: RAY_ADDRESS, else a local Ray started for the job; "auto": the
    # cluster `ray start` began on this machine (Ray's bootstrap file); or the head's host:port
    workers: int | None = None  # embed: model workers (actors); None: one per GPU, or on CPUs all CPUs but one.
    # reindex: tasks, each adding a run of shards; None: one per CPU of the cluster
    gpus_per_worker: float | None = None  # None: 1 where the cluster has GPUs, else 0 (CPU workers)
    cpus_per_worker: float = 1.0  # logical CPUs a model worker (or an index task) holds
    cpus_per_decode_task: float = 1.0  # GPU workers: logical CPUs a read/decode task holds (CPU workers decode
    # their own batches); one task's worth must stay free
    threads_per_worker: int | None = None  # torch threads of a CPU worker; None: the cluster's CPUs / workers
    start_timeout_s: int = 600  # the job starts once every worker has loaded the model; a cluster that
    # cannot place them all fails after this long instead of running on fewer


@dataclass(frozen=True)
class RayCluster:
    """The cluster a job ran on, as its report gives it."""

    address: str  # its GCS address (host:port), or "local": a Ray started for this job
    authenticated: bool | None  # it asks every client for its token (Ray's token authentication); None: unknown
    ray_version: str

    def to_json(self) -> dict:
        return {"address": self.address, "authenticated": self.authenticated, "ray_version": self.ray_version}


def require_ray():
    """Gives the `ray` module, or raises EngineError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - `ray` without its data extra lacks Ray Data
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray Data, which is not installed ({exc}); install it with "
                          f"`{INSTALL_HINT}`, or use --engine local") from exc
    return ray


@contextlib.contextmanager
def connected(ray, address: str | None) -> Iterator[RayCluster]:
    """Gives the cluster for the `with` block, joined (after `check_cluster`) or started unless already
    connected; a connection made here is closed after, and Ray's authentication mode restored."""
    if ray.is_initialized():
        yield RayCluster(ray.get_runtime_context().gcs_address, _token_mode(), ray.__version__)
        return
    target = resolve_address(address)
    saved_mode = os.environ.get(AUTH_MODE)
    try:
        authenticated = check_cluster(ray, target) if target else None
        try:
            ray.init(address=target or "local", include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=log.isEnabledFor(logging.INFO))
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
            if target is None:
                raise EngineError(f"cannot start a local Ray ({exc}); see Ray's message, or give a cluster's "
                                  "address with --ray-address") from exc
            raise EngineError(f"cannot join the Ray cluster at --ray-address {target!r} ({exc}); check "
                              "the address is the head's (`ray status` on the head shows it)") from exc
        yield RayCluster(target or "local", _token_mode() if authenticated is None else authenticated,
                         ray.__version__)
    finally:
        ray.shutdown()
        _set_auth_mode(saved_mode)  # a local Ray turns token mode on for this process: not for the next job


def resolve_address(address: str | None) -> str | None:
    """Gives the address to join, or None to start a local Ray; a cluster named by Ray's bootstrap file only
    for "auto" (or RAY_ADDRESS=auto), and only while it answers."""
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
    if address is None or address == "local":
        if address is None:
            _note_bootstrap_file()
        return None
    if address == "auto":
        return _bootstrap_address()
    return address


def bootstrap_file() -> Path:
    """Gives the file where `ray start` names its cluster (in Ray's temporary folder: RAY_TMPDIR, else /tmp)."""
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:  # Ray before the move to _common
        from ray._private.utils import get_ray_address_file
    return Path(get_ray_address_file(None))


def _note_bootstrap_file() -> None:
    """Logs that the cluster Ray's bootstrap file names is not used: a warning if it is gone."""
    file = bootstrap_file()
    named = file.read_text().strip() if file.is_file() else ""
    if not named:
        return
    if _answers(named):
        log.info("a Ray cluster started by `ray start` runs at %s; this job starts its own local Ray "
                 "(--ray-address auto joins that cluster)", named)
    else:
        log.warning("Ray's bootstrap file %s names %s, where no Ray cluster answers (a head stopped without "
                    "`ray stop`); this job starts its own local Ray. `ray stop` removes the stale file.",
                    file, named)


def _bootstrap_address() -> str:
    """Gives the address `ray start` wrote in Ray's bootstrap file, once a cluster answers there."""
    file = bootstrap_file()
    named = file.read_text().strip() if file.is_file() else ""
    if not named:
        raise EngineError(f"--ray-address auto: no Ray cluster was started on this machine ({file} is missing); "
                          "start one with `ray start --head`, give the head's host:port, or leave "
                          "--ray-address out to run a local Ray")
    if not _answers(named):
        raise EngineError(f"--ray-address auto: Ray's bootstrap file {file} names {named}, where no Ray cluster "
                          "answers: its head stopped without `ray stop`. Run `ray stop` to remove the stale "
                          "file and `ray start --head` to start a cluster, or leave --ray-address out to run "
                          "a local Ray")
    return named


def check_cluster(ray, target: str) -> bool | None:
    """Gives whether the cluster at `target` asks for a token, after checking that it answers, takes this
    machine's token if it asks for one (sent unasked only to a cluster on this machine) and runs this
    machine's Ray and Python; raises EngineError naming the problem and its fix otherwise."""
    if target.startswith("ray://"):  # Ray Client: the client server checks its own
        return None
    if not _answers(target):
        raise EngineError(f"no Ray cluster at --ray-address {target!r}: nothing answers there in "
                          f"{CONNECT_TIMEOUT_S:g} s; start one with `ray start --head --port PORT` and give "
                          "its host:PORT, or leave --ray-address out to run a local Ray")
    from ray import exceptions

    AuthenticationError = getattr(exceptions, "AuthenticationError", ())  # (): a Ray without token authentication
    with _auth_mode("disabled"), _quiet_stderr():  # Ray's client logs the refusal this check may meet
        try:
            _gcs(target)
            asks = False
        except AuthenticationError:
            asks = True
    if asks:
        _take_token(target)
    try:
        client = _gcs(target)
    except AuthenticationError as exc:
        raise EngineError(f"authentication refused: the Ray cluster at {target!r} does not take the token "
                          f"{_token_source()} ({exc.message}); {TOKEN_HINT}") from exc
    _check_versions(ray, target, client)
    return asks


def _take_token(target: str) -> None:
    """Turns on Ray's token mode for this process for a cluster that asks for a token, or says why not."""
    mode, source = os.environ.get(AUTH_MODE), _token_source()
    if mode == "disabled" or source is None:
        why = f"{AUTH_MODE}=disabled here; unset it" if mode == "disabled" else "this machine has none"
        raise EngineError(f"authentication refused: the Ray cluster at {target!r} asks for its token (Ray's token "
                          f"authentication) and {why}; {TOKEN_HINT}")
    if mode is None:
        if not _on_this_machine(target.rsplit(":", 1)[0]):  # as Ray: no token sent to an address given unasked
            raise EngineError(f"authentication refused: the Ray cluster at {target!r} asks for its token; set "
                              f"{AUTH_MODE}=token to send it the token {source}")
        log.info("the Ray cluster at %s asks for its token: sending the token %s", target, source)
        _set_auth_mode("token")


def _check_versions(ray, target: str, client) -> None:
    """Raises EngineError unless the cluster runs this machine's Ray and Python (as Ray would, later)."""
    try:
        from ray._common.usage.usage_lib import get_cluster_metadata
    except ImportError:  # Ray before the move to _common
        from ray._private.usage.usage_lib import get_cluster_metadata

    metadata = get_cluster_metadata(client) or {}
    theirs = (metadata.get("ray_version"), metadata.get("python_version"))
    ours = (ray.__version__, platform.python_version())
    level = 2 if os.environ.get("RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL") == "minor" else 3
    if theirs[0] and (theirs[0] != ours[0] or theirs[1].split(".")[:level] != ours[1].split(".")[:level]):
        raise EngineError(f"Ray version mismatch: the cluster at {target!r} runs Ray {theirs[0]} on Python "
                          f"{theirs[1]}, this machine Ray {ours[0]} on Python {ours[1]}; install the cluster's "
                          f"here (`pip install \"ray[data]=={theirs[0]}\"` on Python {theirs[1]}), or start the "
                          "cluster with this machine's")


def _answers(address: str) -> bool:
    """Gives whether something accepts a connection at host:port within the connect timeout."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def _gcs(target: str):
    """Gives a client of the cluster's GCS; raises Ray's AuthenticationError if it refuses this process's token,
    and EngineError if no GCS answers in the connect timeout (Ray itself retries for 40 s)."""
    from ray._raylet import GcsClient

    result: dict = {}

    def connect() -> None:
        try:
            result["client"] = GcsClient(address=target)
        except Exception as exc:  # noqa: BLE001 - handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=connect, daemon=True, name="ray-gcs-check")
    thread.start()
    thread.join(CONNECT_TIMEOUT_S)
    if "error" in result:
        raise result["error"]
    if "client" not in result:
        raise EngineError(f"something answers at --ray-address {target!r} but no Ray GCS did in "
                          f"{CONNECT_TIMEOUT_S:g} s; give the head's port (`ray start --head --port PORT`)")
    return result["client"]


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Sends this process's stderr (file descriptor 2: Ray's C++ logs too) to nowhere for the block."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _token_source() -> str | None:
    """Gives where Ray finds this process's token, in Ray's order, or None where there is none."""
    if os.environ.get(TOKEN):
        return f"in {TOKEN}"
    path = Path(os.environ.get(TOKEN_PATH) or Path.home() / ".ray" / "auth_token")
    return f"in {path}" if path.is_file() and path.stat().st_size else None


def _on_this_machine(host: str) -> bool:
    """Gives whether `host` is one of this machine's addresses (it can bind to it)."""
    try:
        ip = ipaddress.ip_address(socket.gethostbyname(host.strip("[]")))
        with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET) as probe:
            probe.bind((str(ip), 0))
        return True
    except (OSError, ValueError):
        return False


def _token_mode() -> bool | None:
    """Gives whether this process runs in Ray's token mode (None: a Ray without token authentication)."""
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode
    except ImportError:
        return None
    return get_authentication_mode() == AuthenticationMode.TOKEN


@contextlib.contextmanager
def _auth_mode(mode: str) -> Iterator[None]:
    """Runs the block in Ray's authentication `mode`, then restores this process's."""
    saved = os.environ.get(AUTH_MODE)
    _set_auth_mode(mode)
    try:
        yield
    finally:
        _set_auth_mode(saved)


def _set_auth_mode(mode: str | None) -> None:
    """Sets RAY_AUTH_MODE (None: unset) and has Ray read it again, as `ray start` does when it turns it on."""
    if mode is None:
        os.environ.pop(AUTH_MODE, None)
    else:
        os.environ[AUTH_MODE] = mode
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication
        return
    Config.initialize("")  # before dropping the cached token: Ray's own order
    AuthenticationTokenLoader.instance().reset_cache()


def node_names(ray) -> dict[str, str]:
    """Gives 'address (id prefix)' by node id: several nodes may share an address (containers, tests)."""
    return {node["NodeID"]: f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})" for node in ray.nodes()}


def node_placements(ray, cpus: float, tasks: int) -> list:
    """Gives a scheduling strategy for each of `tasks` tasks of `cpus` CPUs: the alive nodes that can hold
    one, taken in turn (soft affinity: a task whose node died runs elsewhere). Ray's SPREAD is best
    effort only: when the first tasks finish fast, the later ones may all land on one node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = sorted(node["NodeID"] for node in ray.nodes()
                   if node.get("Alive") and float(node.get("Resources", {}).get("CPU", 0)) >= cpus)
    if not nodes:
        return ["SPREAD"] * tasks
    return [NodeAffinitySchedulingStrategy(node_id=nodes[n % len(nodes)], soft=True) for n in range(tasks)]
