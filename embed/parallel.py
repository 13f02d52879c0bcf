"""The local engine: one device runs in this process (`job.LocalEngine`); several, one process each.

`DevicesEngine` runs one process per device over disjoint shards of the input. Each process embeds
its shard into a part store beside the target; the parts are then merged in the order of the input,
so the store is the one a single-process run would have written. A killed run leaves its part stores
in place: run again (with the same devices), each part resumes from what it had committed, and the
merge skips what an interrupted merge had already added.
"""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from typing import TYPE_CHECKING

import numpy as np
import torch

from emoreact.index import Store

from .engines import Engine
from .config import EmbedConfig
from .job import EmbedReport, LocalEngine, run_embed_job
from .models import Backbone, ModelSpec, load_backbone
from .readers import Record
from .writer import reason_kind, split_for

if TYPE_CHECKING:
    from emoreact.rayutil import RayConfig


def local_engine(device: str = "auto", ray_config: RayConfig | None = None) -> Engine:
    """Gives the engine of `--engine local` for `--device`: one name runs in this process, a comma-separated
    list or cuda:all one process per device. (`ray_config` is the Ray engine's and is not read here.)"""
    devices = _devices(device)
    return LocalEngine(devices[0]) if len(devices) == 1 else DevicesEngine(tuple(devices))


def _devices(device: str) -> list[str]:
    """Gives the devices of `--device`: one name, a comma-separated list, or cuda:all (every GPU)."""
    if device == "cuda:all":
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cuda"]
    return [d.strip() for d in device.split(",") if d.strip()] or ["auto"]


@dataclass(frozen=True)
class DevicesEngine:
    """The embed job on several devices of this machine, one process each (see the module docstring)."""

    devices: tuple[str, ...]

    def backbone(self, spec: ModelSpec) -> Backbone:
        """Gives the model on the first device: it names the model for the store; each process loads its own."""
        return load_backbone(spec, self.devices[0])

    def embed(self, records: list[Record], store: Store, backbone: Backbone, config: EmbedConfig,
              known: set[str]) -> EmbedReport:
        """Embeds `records` on each device in parallel and merges the results into `store` (see `engines.Engine`)."""
        parts_root = store.root / ".parts"  # kept after a kill: each part store resumes by content hash
        jobs = [(records[i::len(self.devices)], parts_root / str(i), backbone.spec, device, config, known,
                 store.labels) for i, device in enumerate(self.devices)]
        # spawn, not fork: each process initialises its own CUDA context.
        with ProcessPoolExecutor(len(self.devices), mp_context=get_context("spawn")) as pool:
            list(pool.map(_embed_part, jobs))
        report = _merge(records, store, [Store.open(job[1]) for job in jobs], config, known)
        report.workers = len(self.devices)
        shutil.rmtree(parts_root, ignore_errors=True)  # every row is in the store now, committed
        return report


def _embed_part(job) -> EmbedReport:
    records, path, spec, device, config, known, labels = job
    backbone = load_backbone(spec, device)
    part = Store.create_or_resume(path, backbone.spec.model_id, backbone.dim, {}, labels)
    # Near-duplicates are grouped once, over the merged store, not per part.
    report = run_embed_job(records, part, backbone, replace(config, progress=False, near_duplicate_threshold=None),
                           known)
    part.close()
    return report


def _merge(records: list[Record], store: Store, parts: list[Store], config: EmbedConfig,
           known: set[str]) -> EmbedReport:
    """Adds the parts' rows and skips to `store` in input order, as one process would have; rows whose
    hash the store already `known` (added by an interrupted merge) are not added twice."""
    done, skipped, sizes = {}, {}, {}
    for part in parts:
        vectors, items = part.vectors(), part.items()
        ids = np.array([item.id for item in items], np.int64)
        words = dict(zip(ids.tolist(), part.texts(ids.tolist())))
        texts = part.text_vectors_of(ids)
        clips = part.clips(ids.tolist())
        done |= {item.path: (item, vectors[item.id], words[item.id], texts[n], clips[n]) for n, item in enumerate(items)}
        sizes |= part.file_sizes()
        skipped |= {path: (sha, reason) for path, sha, reason in part.skipped_hashes()}
    report = EmbedReport()
    seen: dict[str, str] = {}
    rows, vectors, texts, skips = [], [], [], []
    for record in records:
        path = str(record.path)
        if path in done and done[path][0].sha256 in known:
            report.already_present += 1
        elif path in done:
            item, vector, words, text, clip = done[path]
            if item.sha256 in seen:
                skips.append((path, item.sha256, f"duplicate of {seen[item.sha256]}"))
                continue
            seen[item.sha256] = path
            rows.append({"path": path, "sha256": item.sha256, "labels": record.labels,
                         "split": record.split or split_for(item.sha256), "split_fixed": bool(record.split),
                         "width": item.width, "height": item.height, "bytes": sizes[path],
                         "caption": words["caption"] if words else None,
                         "ocr": json.dumps(words["ocr"]) if words and words["ocr"] else None, "clip": clip})
            vectors.append(vector)
            texts.append(text)
        elif path in skipped:
            sha, reason = skipped[path]
            if reason.startswith("duplicate of") and sha in seen:
                reason = f"duplicate of {seen[sha]}"
            skips.append((path, sha, reason))
        else:
            report.already_present += 1
        if len(rows) >= config.shard_size:
            _commit(store, report, rows, vectors, texts, skips)
            rows, vectors, texts, skips = [], [], [], []
    _commit(store, report, rows, vectors, texts, skips)
    for part in parts:
        part.close()
    return report


def _commit(store: Store, report: EmbedReport, rows: list[dict], vectors: list[np.ndarray], texts: list[np.ndarray],
            skips: list[tuple[str, str | None, str]]) -> None:
    # Skips go with the shard after them: a duplicate's original is always in it or before it.
    if rows:
        store.add(rows, np.stack(vectors), skips, np.stack(texts) if np.any(texts) else None)
    else:
        store.add_skipped(skips)
    report.added += len(rows)
    report.skipped.update(reason_kind(reason) for _, _, reason in skips)
