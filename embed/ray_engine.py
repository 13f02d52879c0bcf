"""The embed job on Ray Data, for more than one machine (`--engine ray`): the Ray engine.

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
model's files at the same paths. Ray's settings, its import guard and the connection are shared with
the index build on Ray (`emoreact.rayutil`, `emoreact.index.ray_build`).
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from emoreact.index import Store
from emoreact.index.faults import ENV as FAULT_ENV
from emoreact.index.faults import ONCE_ENV as FAULT_ONCE_ENV
from emoreact.index.faults import fault_point
from emoreact.rayutil import EngineError, RayConfig, connected, node_names, require_ray, resolve_address

from .identity import ModelSpec, is_local_path
from .config import EmbedConfig
from .frames import encode_pooled
from .job import EmbedReport, read_item
from .ocr import ocr_reader
from .texts import ocr_text, text_vectors
from .models import Backbone, load_backbone
from .readers import Record
from .writer import ShardWriter

log = logging.getLogger(__name__)
_STATUS_OK, _STATUS_KNOWN, _STATUS_ERROR = "ok", "known", "error"


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


class RayEngine:
    """The embed job on a Ray cluster through Ray Data (see the module docstring)."""

    def __init__(self, device: str = "auto", ray_config: RayConfig | None = None) -> None:
        self._ray = require_ray()  # at once: not after reading the source and loading a model
        self.device = device  # the workers' device: auto, cpu or cuda
        ray_config = ray_config or RayConfig()
        # the cluster chosen at once too ("local": a Ray of its own), so that a stale one fails before any work
        self.ray_config = replace(ray_config, address=resolve_address(ray_config.address) or "local")

    def backbone(self, spec: ModelSpec) -> Backbone:
        """Gives the model on the CPU: it names the model and preprocesses; each worker loads its own."""
        return load_backbone(spec, "cpu")

    def embed(self, records: list[Record], store: Store, backbone: Backbone, config: EmbedConfig,
              known: set[str]) -> EmbedReport:
        """Adds the records not in `known` to `store`, shard by shard, from the cluster's results (see
        `engines.Engine`); the report names the engine, its nodes and workers, the images per node and the
        cluster (its address, whether it asks for a token, its Ray)."""
        ray = self._ray
        report = EmbedReport(engine="ray", nodes=0, workers=0)
        with connected(ray, self.ray_config.address) as cluster:
            report.ray_cluster = cluster.to_json()
            plan = _plan(ray, self.ray_config, self.device)
            report.workers = plan.workers
            writer = ShardWriter(store, records, report, config.shard_size)
            per_node: Counter = Counter()
            nodes: set[str] = set()
            bar = tqdm(total=len(records), unit="img", desc="embed (ray)", disable=not config.progress,
                       smoothing=0.1)
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
                    rows = [item["row"] for _, item in good]
                    words = batch["has_words"][rows]
                    writer.add(good, batch["vector"][rows], batch["text_vector"][rows] if words.any() else None)
                per_node.update(str(batch["node"][item["row"]]) for _, item in good)
                nodes.update(str(node) for node in batch["node"])
                bar.update(len(items))
            bar.close()
            writer.flush()
            names = node_names(ray)
        report.images_per_node = {names.get(node, node): count for node, count in sorted(per_node.items())}
        report.nodes = len(nodes)
        for node, count in report.images_per_node.items():
            log.info("node %s embedded %d images", node, count)
        return report


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
    rows = [{"i": i, "path": str(record.path), "caption": record.caption or ""} for i, record in enumerate(records)]
    blocks = max(1, -(-len(rows) // config.batch_size))
    min_side = max(backbone.preprocess.image_size) if config.reduced_jpeg_decode else None
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    dataset.context.execution_options.preserve_order = True
    dataset.context.enable_progress_bars = False  # the driver shows its own bar with images/s
    dataset.context.wait_for_min_actors_s = plan.start_timeout_s  # or the first worker up takes every batch
    decode_args = {"known": _HashSet(known), "transform": backbone.transform,
                   "max_pixels": config.max_pixels, "min_side": min_side, "ocr": config.ocr, "clips": config.clips()}
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
        digest = bytes.fromhex(sha)
        at = int(np.searchsorted(self._digests, digest))
        # an S32 element reads back without its trailing zero bytes: compare the stored 32 bytes themselves
        return at < len(self._digests) and self._digests[at:at + 1].tobytes() == digest


def _decode_batch(batch: dict, known, transform, max_pixels: int, min_side: int | None, ocr: str = "off",
                  clips=None) -> dict:
    """Gives a batch of decoded records as columns: one row per record, pixels (F, 3, H, W) for the good ones
    (F = 1 for a still; a clip's chosen frames, with their weights and its clip record as JSON, "" for a
    still), the caption as given and the words read in the image (OCR lines as JSON, "" when none were read)."""
    reader = ocr_reader(ocr)  # loaded once per worker process
    items = [read_item(int(i), Path(path), known, transform, max_pixels, min_side, ocr=reader, clips=clips)
             for i, path in zip(batch["i"], batch["path"])]
    empty = np.zeros((1, 3, 0, 0), np.float32)  # no pixels: the file is known or bad
    return {"i": np.array([item["i"] for item in items], np.int64),
            "sha": np.array([item["sha"] or "" for item in items]),
            "status": np.array([_STATUS_KNOWN if item.get("known") else _STATUS_ERROR if "error" in item
                                else _STATUS_OK for item in items]),
            "reason": np.array([item.get("error", "") for item in items]),
            "size": np.array([item.get("size", (0, 0)) for item in items], np.int64).reshape(-1, 2),
            "bytes": np.array([item.get("bytes", 0) for item in items], np.int64),
            "caption": np.asarray(batch["caption"]) if "caption" in batch else np.full(len(items), ""),
            "ocr": np.array([json.dumps(item["ocr"]) if item.get("ocr") is not None else "" for item in items]),
            "weights": np.array([json.dumps(item["weights"]) if "weights" in item else "" for item in items]),
            "clip": np.array([json.dumps(item["clip"]) if "clip" in item else "" for item in items]),
            # every row (F, 3, H, W): Ray's variable-shaped tensor column needs one number of dimensions
            "pixels": [_frames(item["tensor"]).numpy() if "tensor" in item else empty for item in items]}


def _frames(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.unsqueeze(0) if tensor.dim() == 3 else tensor


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
            weights = [json.loads(w) if w else None for w in np.asarray(batch.get("weights", [""] * len(ok)))[ok]]
            vectors[ok] = encode_pooled(lambda pixels: self.backbone.encode_images(pixels).cpu().numpy(),
                                        [torch.from_numpy(np.asarray(p)) for p in batch["pixels"][ok]], weights)
        blank = [""] * len(ok)
        captions = [str(c) or None for c in batch.get("caption", blank)]
        read = [ocr_text(json.loads(o)) if o else None for o in batch.get("ocr", blank)]
        texts = np.zeros((len(ok), self.backbone.dim), np.float16)
        words = ok & np.array([bool(c or r) for c, r in zip(captions, read)], bool)
        if words.any():
            texts[words] = text_vectors(self.backbone.encode_texts, self.backbone.dim,
                                        [c for c, w in zip(captions, words) if w], [r for r, w in zip(read, words) if w])
        out = {key: value for key, value in batch.items() if key != "pixels"}
        return {**out, "vector": vectors, "text_vector": texts, "has_words": words, "node": np.full(len(ok), self.node)}


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
            if "ocr" in batch and batch["ocr"][row]:
                item["ocr"] = json.loads(batch["ocr"][row])
            if "clip" in batch and batch["clip"][row]:
                item["clip"] = json.loads(batch["clip"][row])
        items.append(item)
    return items


def _portable(spec: ModelSpec) -> ModelSpec:
    """Gives the spec with local files as absolute paths: workers do not run in the driver's folder."""
    model = str(Path(spec.model).absolute()) if spec.model.endswith(".json") else spec.model
    pretrained = str(Path(spec.pretrained).absolute()) if is_local_path(spec.pretrained) else spec.pretrained
    return replace(spec, model=model, pretrained=pretrained)
