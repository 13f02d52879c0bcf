"""The embed job on Ray Data, for more than one machine: the only module that imports Ray.

    driver: list the source, take the store's known hashes      (as the local job)
    CPU tasks: read, hash, decode, preprocess (`read_item`)      (the local job's one decode path)
    actor pool: the CLIP model, loaded once per actor            (one per GPU, or CPU actors)
    driver: results in input order -> `ShardWriter` -> store     (the one writer, holding the store lock)

With CPU workers the decode step asks for the workers' CPUs, so Ray Data fuses it into them: each
decodes its own batches, which scales with the workers and keeps pixels out of the object store.
The driver alone writes, shard by shard, through the writer the local job uses, so a Ray run gives
the store a local run gives, and a killed driver resumes from the store's hashes like the local job.
A lost worker is restarted and its batch retried by Ray Data (its defaults for actor pools). Every
node must have EmoReact installed (`pip install "emoreact[ray]"`) and see the source files and the
model's files at the same paths.

The store's index is built on Ray too (`RayIndexBuilder`, for `reindex --engine ray`): the driver
trains the empty index, one task per group of shards adds that group's live vectors to a copy of it
(reading the shards memory-mapped from the store folder, which every node must see at the same
path), and the driver merges the parts in id order and tunes the result.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm import tqdm

from emoreact.index import Store, ann, building
from emoreact.index.ann import IndexSettings
from emoreact.index.faults import ENV as FAULT_ENV
from emoreact.index.faults import ONCE_ENV as FAULT_ONCE_ENV
from emoreact.index.faults import fault_point

from .identity import ModelSpec, is_local_path
from .job import EmbedConfig, EmbedReport, read_item
from .models import Backbone, load_backbone
from .readers import Record
from .writer import ShardWriter

log = logging.getLogger(__name__)
INSTALL_HINT = 'pip install "emoreact[ray]"'
_STATUS_OK, _STATUS_KNOWN, _STATUS_ERROR = "ok", "known", "error"


class EngineError(RuntimeError):
    """The Ray engine cannot run as asked (extra missing, cluster too small); the message says what to do."""


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide the Ray engine runs."""

    address: str | None = None  # None: the local Ray (started if none runs); "auto": the cluster `ray start` began
    workers: int | None = None  # model workers (actors); None: one per GPU, or on CPUs all CPUs but one
    gpus_per_worker: float | None = None  # None: 1 where the cluster has GPUs, else 0 (CPU workers)
    cpus_per_worker: float = 1.0  # logical CPUs a model worker holds
    cpus_per_decode_task: float = 1.0  # GPU workers: logical CPUs a read/decode task holds (CPU workers decode
    # their own batches); one task's worth must stay free
    threads_per_worker: int | None = None  # torch threads of a CPU worker; None: the cluster's CPUs / workers
    start_timeout_s: int = 600  # the job starts once every worker has loaded the model; a cluster that
    # cannot place them all fails after this long instead of running on fewer


@dataclass(frozen=True)
class _Plan:
    """The workers a job starts, as checked against the cluster."""

    workers: int
    device: str  # the workers' torch device: cpu or cuda (Ray gives each worker its own GPUs)
    gpus: float  # per worker
    cpus: float  # per worker
    threads: int | None  # torch threads per CPU worker
    decode_cpus: float  # per decode task
    start_timeout_s: int


def require_ray():
    """Gives the `ray` module, or raises EngineError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - `ray` without its data extra lacks Ray Data
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray Data, which is not installed ({exc}); install it with "
                          f"`{INSTALL_HINT}`, or use --engine local") from exc
    return ray


def run_ray_embed_job(records: list[Record], store: Store, backbone: Backbone, config: EmbedConfig = EmbedConfig(),
                      ray_config: RayConfig = RayConfig(), device: str = "auto",
                      known: set[str] = frozenset()) -> EmbedReport:
    """Embeds the records not yet in `store` on a Ray cluster, records skipped files, finishes the store;
    gives the report (engine "ray", nodes, workers, images per node).

    `backbone` (any device) names the model and gives the preprocessing; each worker loads its own copy
    on `device` (auto, cpu or cuda).
    """
    ray = require_ray()
    report = EmbedReport(engine="ray", nodes=0, workers=0)
    start = time.perf_counter()
    known = store.known_hashes(tombstones=not config.allow_readd) | set(known)
    started_here = _connect(ray, ray_config.address)
    try:
        plan = _plan(ray, ray_config, device)
        report.workers = plan.workers
        writer = ShardWriter(store, records, report, config.shard_size)
        per_node: Counter = Counter()
        nodes: set[str] = set()
        bar = tqdm(total=len(records), unit="img", desc="embed (ray)", disable=not config.progress, smoothing=0.1)
        expected = 0
        batches = _dataset(ray, records, known, backbone, config, plan).iter_batches(
            batch_size=config.batch_size, batch_format="numpy", prefetch_batches=2) if records else []
        for batch in batches:
            items = _items(batch)
            if items[0]["i"] != expected:  # the writer needs input order: a store must not depend on timing
                raise EngineError(f"Ray gave record {items[0]['i']} where {expected} was due; "
                                  "please report this with your Ray version")
            expected += len(items)
            good = writer.sort(items)
            if good:
                writer.add(good, batch["vector"][[item["row"] for _, item in good]])
            per_node.update(str(batch["node"][item["row"]]) for _, item in good)
            nodes.update(str(node) for node in batch["node"])
            bar.update(len(items))
        bar.close()
        writer.flush()
        names = _node_names(ray)
        report.images_per_node = {names.get(node, node): count for node, count in sorted(per_node.items())}
        report.nodes = len(nodes)
    finally:
        if started_here:
            ray.shutdown()
    report.near_duplicate_groups_moved, report.near_duplicate_images_moved = \
        store.finish(config.near_duplicate_threshold, config.index)
    report.seconds = time.perf_counter() - start
    log.info("embed on ray: %s", report.to_json())
    for node, count in report.images_per_node.items():
        log.info("node %s embedded %d images", node, count)
    return report


def _connect(ray, address: str | None) -> bool:
    """Connects to Ray unless already connected; tells whether this call started the connection."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=log.isEnabledFor(logging.INFO))
    except ConnectionError as exc:
        raise EngineError(f"no Ray cluster at --ray-address {address!r} ({exc}); start one with "
                          "`ray start --head`, or leave --ray-address out to run a local Ray") from exc
    return True


def _plan(ray, config: RayConfig, device: str) -> _Plan:
    """Gives the workers, their resources and their device, after checking the cluster can hold them."""
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    want_gpu = config.gpus_per_worker if config.gpus_per_worker is not None else (
        1.0 if gpus and device != "cpu" else 0.0)
    if device.startswith("cuda") and not want_gpu:
        raise EngineError(f"--device {device} with --gpus-per-worker 0: give the workers GPUs "
                          "(--gpus-per-worker 1) or use --device cpu")
    if want_gpu and want_gpu > gpus:
        raise EngineError(f"--gpus-per-worker {want_gpu:g} but the Ray cluster has {gpus:g} GPUs; "
                          "use --gpus-per-worker 0 for CPU workers, or join GPU nodes to the cluster")
    # CPU workers decode their own batches: decode tasks asking the same CPUs are fused into them by Ray Data.
    decode_cpus = config.cpus_per_decode_task if want_gpu else config.cpus_per_worker
    spare = cpus - decode_cpus
    workers = config.workers or (int(gpus // want_gpu) if want_gpu else max(1, int(spare // config.cpus_per_worker)))
    # Actors start before any task; if they hold every CPU no read task can ever run (ray issue 44687).
    if workers * config.cpus_per_worker > spare + 1e-9:
        raise EngineError(f"{workers} workers x {config.cpus_per_worker:g} CPUs leave no CPU for reading and "
                          f"decoding on a Ray cluster of {cpus:g} CPUs; use --workers "
                          f"{max(1, int(spare // config.cpus_per_worker))} or fewer, or add nodes")
    threads = config.threads_per_worker or max(1, int(cpus // workers))
    return _Plan(workers, "cuda" if want_gpu else "cpu", want_gpu, config.cpus_per_worker,
                 None if want_gpu else threads, decode_cpus, config.start_timeout_s)


def _dataset(ray, records: list[Record], known: set[str], backbone: Backbone, config: EmbedConfig, plan: _Plan):
    """Gives the lazy Ray dataset: records -> decode tasks -> model actors, in input order."""
    rows = [{"i": i, "path": str(record.path)} for i, record in enumerate(records)]
    blocks = max(1, -(-len(rows) // config.batch_size))
    min_side = max(backbone.preprocess.image_size) if config.reduced_jpeg_decode else None
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    dataset.context.execution_options.preserve_order = True
    dataset.context.enable_progress_bars = False  # the driver shows its own bar with images/s
    dataset.context.wait_for_min_actors_s = plan.start_timeout_s  # or the first worker up takes every batch
    decode_args = {"known": _HashSet(known), "transform": backbone.transform,
                   "max_pixels": config.max_pixels, "min_side": min_side}
    dataset = dataset.map_batches(_decode_batch, batch_size=config.batch_size, fn_kwargs=decode_args,
                                  num_cpus=plan.decode_cpus)
    faults = {k: os.environ[k] for k in (FAULT_ENV, FAULT_ONCE_ENV) if os.environ.get(k)}
    return dataset.map_batches(
        _Encoder, batch_size=config.batch_size,
        fn_constructor_args=(_portable(backbone.spec), plan.device, plan.threads, backbone.dim),
        compute=ray.data.ActorPoolStrategy(size=plan.workers),
        num_cpus=plan.cpus, num_gpus=plan.gpus or None,  # None on CPU workers: no GPU asked for at all
        # a test names a fault point in the driver's environment; the workers see it too
        **({"runtime_env": {"env_vars": faults}} if faults else {}))


class _HashSet:
    """The store's known hashes as one sorted array: shared by the decode tasks without unpickling a set."""

    def __init__(self, hashes: set[str]) -> None:
        self._digests = np.array(sorted(bytes.fromhex(h) for h in hashes), dtype="S32")

    def __contains__(self, sha: str) -> bool:
        digest = np.bytes_(bytes.fromhex(sha))
        at = int(np.searchsorted(self._digests, digest))
        return at < len(self._digests) and self._digests[at] == digest


def _decode_batch(batch: dict, known, transform, max_pixels: int, min_side: int | None) -> dict:
    """Gives a batch of decoded records as columns: one row per record, pixels (3, H, W) for the good ones."""
    items = [read_item(int(i), Path(path), known, transform, max_pixels, min_side)
             for i, path in zip(batch["i"], batch["path"])]
    empty = np.zeros((3, 0, 0), np.float32)  # no pixels: the file is known or bad
    return {"i": np.array([item["i"] for item in items], np.int64),
            "sha": np.array([item["sha"] or "" for item in items]),
            "status": np.array([_STATUS_KNOWN if item.get("known") else _STATUS_ERROR if "error" in item
                                else _STATUS_OK for item in items]),
            "reason": np.array([item.get("error", "") for item in items]),
            "size": np.array([item.get("size", (0, 0)) for item in items], np.int64).reshape(-1, 2),
            "bytes": np.array([item.get("bytes", 0) for item in items], np.int64),
            "pixels": [item["tensor"].numpy() if "tensor" in item else empty for item in items]}


class _Encoder:
    """A model worker: loads the backbone once, then gives (N, D) float16 vectors for decoded batches."""

    def __init__(self, spec: ModelSpec, device: str, threads: int | None, dim: int) -> None:
        import ray

        if threads:
            torch.set_num_threads(threads)
        self.backbone = load_backbone(spec, device)
        if self.backbone.dim != dim:
            raise EngineError(f"worker loaded {spec.model_id} with dim {self.backbone.dim}, the driver's has {dim}; "
                              "install the same EmoReact and model files on every node")
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> dict:
        fault_point("in_embed_worker")
        ok = batch["status"] == _STATUS_OK
        vectors = np.zeros((len(ok), self.backbone.dim), np.float16)
        if ok.any():
            pixels = torch.from_numpy(np.stack(list(batch["pixels"][ok])))
            vectors[ok] = self.backbone.encode_images(pixels).cpu().numpy()
        out = {key: value for key, value in batch.items() if key != "pixels"}
        return {**out, "vector": vectors, "node": np.full(len(ok), self.node)}


def _items(batch: dict) -> list[dict]:
    """Gives the writer's items (as `read_item` makes them, without pixels) for a batch of results."""
    items = []
    for row, (i, sha, status) in enumerate(zip(batch["i"], batch["sha"], batch["status"])):
        item = {"i": int(i), "sha": str(sha) or None, "row": row}
        if status == _STATUS_KNOWN:
            item["known"] = True
        elif status == _STATUS_ERROR:
            item["error"] = str(batch["reason"][row])
        else:
            item.update(size=tuple(int(v) for v in batch["size"][row]), bytes=int(batch["bytes"][row]))
        items.append(item)
    return items


def _portable(spec: ModelSpec) -> ModelSpec:
    """Gives the spec with local files as absolute paths: workers do not run in the driver's folder."""
    model = str(Path(spec.model).absolute()) if spec.model.endswith(".json") else spec.model
    pretrained = str(Path(spec.pretrained).absolute()) if is_local_path(spec.pretrained) else spec.pretrained
    return replace(spec, model=model, pretrained=pretrained)


def _node_names(ray) -> dict[str, str]:
    """Gives 'address (id prefix)' by node id: several nodes may share an address (containers, tests)."""
    return {node["NodeID"]: f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})" for node in ray.nodes()}


class RayIndexBuilder:
    """A `Store.reindex` builder that adds the store's vectors on a Ray cluster (see the module docstring).

    After a build, `added_per_node_` gives the vectors each node added, by node name."""

    def __init__(self, ray_config: RayConfig = RayConfig()) -> None:
        self._ray = require_ray()  # at once: before the store is locked or anything trained
        self.ray_config = ray_config
        self.added_per_node_: dict[str, int] = {}

    def __call__(self, store: Store, factory: str) -> tuple[faiss.Index, IndexSettings]:
        """Gives (index, settings) as `building.build_for_store` does, the adding done by Ray tasks."""
        if ann.is_flat(factory):  # nothing to train and a flat add is a copy: a cluster would only add transfers
            log.info("a %s index is built in this process, not on Ray", factory)
            return building.build_for_store(store, factory)
        started_here = _connect(self._ray, self.ray_config.address)
        try:
            index, settings, per_node = _build_on_ray(self._ray, store, factory, self.ray_config)
            names = _node_names(self._ray)
        finally:
            if started_here:
                self._ray.shutdown()
        self.added_per_node_ = {names.get(node, node): count for node, count in sorted(per_node.items())}
        for node, count in self.added_per_node_.items():
            log.info("node %s added %d vectors", node, count)
        return index, settings


def _build_on_ray(ray, store: Store, factory: str, config: RayConfig) -> tuple[faiss.Index, IndexSettings, Counter]:
    """Gives the index `building.build` gives (trained, filled, tuned), its vectors added by Ray tasks, with
    the count each node (by id) added."""
    start = time.perf_counter()
    rows, live = store.rows_written(), store.live_ids()
    index = building.train_empty(factory, store.dim, live, store.vectors_of)
    empty = ray.put(faiss.serialize_index(index))  # once: every task gets the same trained copy
    folder = str(Path(store.root).resolve() / "vectors")
    cpus = max(1.0, config.cpus_per_worker)
    tasks = config.workers or max(1, int(float(ray.cluster_resources().get("CPU", 1)) // cpus))
    add = ray.remote(num_cpus=cpus, scheduling_strategy="SPREAD")(_add_shards)
    refs = [add.remote(empty, folder, group, live[(live >= group[0].first_id) &
                                                  (live < group[-1].first_id + group[-1].count)], int(cpus))
            for group in _shard_groups(store.shards(), tasks)]
    per_node: Counter = Counter()
    while refs:  # in id order: the merged lists then hold their ids as one in-process add would
        part, node, added = ray.get(refs.pop(0))  # dropping the ref frees the part in the object store
        index.merge_from(faiss.deserialize_index(part), 0)
        per_node[node] += added
    if index.ntotal != len(live):
        raise EngineError(f"the Ray tasks added {index.ntotal} vectors, the store has {len(live)} live images; "
                          "please report this with your Ray version")
    settings = IndexSettings(factory=factory, file="", indexed_rows=rows, trained_rows=rows)
    settings = building.tune_on_store(index, settings, live, store.live_blocks, store.vectors_of)
    return index, settings.with_(build_seconds=round(time.perf_counter() - start, 2)), per_node


def _shard_groups(shards: list, groups: int) -> list[list]:
    """Gives the shards cut into at most `groups` runs of consecutive shards with about equal rows."""
    total = sum(shard.count for shard in shards)
    out: list[list] = []
    done = 0
    for shard in shards:
        # a new group starts once the rows so far pass the next equal share
        if not out or (done >= total * len(out) / groups and len(out) < groups):
            out.append([])
        out[-1].append(shard)
        done += shard.count
    return out


def _add_shards(empty: np.ndarray, folder: str, shards: list, ids: np.ndarray,
                threads: int) -> tuple[np.ndarray, str, int]:
    """A Ray task: gives (the serialised index holding the live `ids` of `shards`, its node id, how many)."""
    import ray

    faiss.omp_set_num_threads(threads)
    index = faiss.deserialize_index(empty)
    added = 0
    for shard in shards:
        path = Path(folder) / shard.name
        try:
            vectors = np.load(path, mmap_mode="r", allow_pickle=False)
        except OSError as exc:
            raise EngineError(f"a Ray node cannot read {path} ({exc}); every node must see the store "
                              "at the same path (a shared file system)") from exc
        mine = ids[(ids >= shard.first_id) & (ids < shard.first_id + shard.count)]
        for at in range(0, len(mine), 65_536):  # one block at a time in float32, as the local build
            block = mine[at:at + 65_536]
            index.add_with_ids(np.asarray(vectors[block - shard.first_id], np.float32), block)
        added += len(mine)
    return faiss.serialize_index(index), ray.get_runtime_context().get_node_id(), added
