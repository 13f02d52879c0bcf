"""What both Ray engines share: their settings, the import guard for the `ray` extra, the connection.

The embed job (`embed/ray_engine.py`) and the index build (`index/ray_build.py`) run on Ray; neither
imports the other. Ray itself is imported only where a job starts (`require_ray`), so without the
extra everything else works and `--engine ray` fails at once, naming the extra to install.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)
INSTALL_HINT = 'pip install "emoreact[ray]"'


class EngineError(RuntimeError):
    """The Ray engine cannot run as asked (extra missing, cluster too small); the message says what to do."""


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide a Ray engine runs (the index build reads `address`, `workers`, `cpus_per_worker`)."""

    address: str | None = None  # None: the local Ray (started if none runs); "auto": the cluster `ray start` began
    workers: int | None = None  # embed: model workers (actors); None: one per GPU, or on CPUs all CPUs but one.
    # reindex: tasks, each adding a run of shards; None: one per CPU of the cluster
    gpus_per_worker: float | None = None  # None: 1 where the cluster has GPUs, else 0 (CPU workers)
    cpus_per_worker: float = 1.0  # logical CPUs a model worker (or an index task) holds
    cpus_per_decode_task: float = 1.0  # GPU workers: logical CPUs a read/decode task holds (CPU workers decode
    # their own batches); one task's worth must stay free
    threads_per_worker: int | None = None  # torch threads of a CPU worker; None: the cluster's CPUs / workers
    start_timeout_s: int = 600  # the job starts once every worker has loaded the model; a cluster that
    # cannot place them all fails after this long instead of running on fewer


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
def connected(ray, address: str | None) -> Iterator[None]:
    """Connects to Ray for the `with` block unless already connected; a connection made here is closed after."""
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=log.isEnabledFor(logging.INFO))
    except ConnectionError as exc:
        raise EngineError(f"no Ray cluster at --ray-address {address!r} ({exc}); start one with "
                          "`ray start --head`, or leave --ray-address out to run a local Ray") from exc
    try:
        yield
    finally:
        ray.shutdown()


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
