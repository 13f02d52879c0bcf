"""The product's use cases, wiring embed/, index/ and heads/ together; cli.py and web/ call these.

Files, devices and models live here (the edges); the packages underneath stay pure.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embed import (Backbone, EmbedConfig, EmbedReport, ImageError, ModelSpec, decode_image, load_backbone,
                   read_source, run_embed_job)
from embed.images import DEFAULT_MAX_PIXELS
from embed.parallel import run_sharded_embed_job
from heads import (EmotionHead, HeadConfig, LabelConfig, decide, emoji_policy, fit_head, label_text_embeddings,
                   load_label_config, report, write_plots, zero_shot_head)
from index import Store, StoreError, atomic_write_text

log = logging.getLogger(__name__)


def embed_source(source: str | Path, store_path: str | Path, spec: ModelSpec, labels: LabelConfig,
                 fmt: str = "auto", device: str = "auto", config: EmbedConfig = EmbedConfig()) -> EmbedReport:
    """Embeds a folder/manifest/dataset copy into a store (created or resumed); gives the report."""
    records = read_source(source, labels, fmt)
    devices = _devices(device)
    if len(devices) == 1:
        return embed_records(records, store_path, load_backbone(spec, devices[0]), labels, config)
    store = _writable_store(store_path, load_backbone(spec, devices[0]), labels)  # each device loads its own
    try:
        report_ = run_sharded_embed_job(records, store, spec, devices, config)
        _write_report(store, report_)
    finally:
        store.close()
    return report_


def embed_records(records: list, store_path: str | Path, backbone: Backbone, labels: LabelConfig,
                  config: EmbedConfig = EmbedConfig()) -> EmbedReport:
    """Embeds records into a store (created or resumed) on one device; writes STORE/report.json."""
    store = _writable_store(store_path, backbone, labels)
    try:
        report_ = run_embed_job(records, store, backbone, config)
        _write_report(store, report_)
    finally:
        store.close()
    return report_


def _writable_store(store_path: str | Path, backbone: Backbone, labels: LabelConfig) -> Store:
    spec = backbone.spec
    return Store.create_or_resume(store_path, spec.model_id, backbone.dim,
                                  {**backbone.preprocess.to_json(), "model": spec.model, "pretrained": spec.pretrained},
                                  labels.names)


def _write_report(store: Store, report_: EmbedReport) -> None:
    skipped = [{"path": p, "reason": r} for p, r in store.skipped()]
    atomic_write_text(store.root / "report.json", json.dumps({**report_.to_json(), "skipped_files": skipped},
                                                             indent=2, ensure_ascii=False) + "\n")


def _devices(device: str) -> list[str]:
    """Gives the devices of `--device`: one name, a comma-separated list, or cuda:all (every GPU)."""
    if device == "cuda:all":
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cuda"]
    return [d.strip() for d in device.split(",") if d.strip()] or ["auto"]


def backbone_for_store(store: Store, device: str = "auto", pretrained: str | None = None) -> Backbone:
    """Gives the backbone a store was built with (its weights may be re-pointed by `pretrained`)."""
    pre = store.manifest.get("preprocess", {})
    spec = ModelSpec(model=pre.get("model") or ModelSpec.parse(store.model_id).model,
                     pretrained=pretrained or pre.get("pretrained") or ModelSpec.parse(store.model_id).pretrained)
    backbone = load_backbone(spec, device)
    if backbone.spec.model_id != store.model_id:
        raise StoreError(f"store {store.root} was built with {store.model_id!r} but the weights given make "
                         f"{backbone.spec.model_id!r}; pass the same --pretrained as at embed time")
    return backbone


@dataclass
class Splits:
    """Labelled vectors by split: x (N, D) float32, y (N, L) float32 {0, 1}."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]


def labelled_splits(store: Store, label_names: list[str]) -> Splits:
    """Gives the store's labelled vectors and targets per split (unlabelled images left out)."""
    vectors = store.vectors()
    items = store.items()
    position = {name: j for j, name in enumerate(label_names)}
    xs, ys = {}, {}
    for split in ("train", "val", "test"):
        rows = [i for i, it in enumerate(items) if it.split == split and it.labels]
        y = np.zeros((len(rows), len(label_names)), np.float32)
        for r, i in enumerate(rows):
            for name in items[i].labels:
                if name not in position:
                    raise StoreError(f"store label {name!r} is not in the label config {label_names}; "
                                     "use the label config the store was built with")
                y[r, position[name]] = 1.0
        xs[split], ys[split] = vectors[rows], y
    return Splits(xs, ys)


def train_from_store(store_path: str | Path, out: str | Path, config: HeadConfig, labels: LabelConfig,
                     device: str = "auto", pretrained: str | None = None) -> tuple[EmotionHead, dict]:
    """Trains a head on a store's train split, tunes on val, evaluates on test; saves head + report."""
    store = Store.open(store_path)
    data = labelled_splits(store, labels.names)
    dev = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    x_val, y_val = data.x["val"], data.y["val"]
    if len(x_val) == 0 and config.kind != "zeroshot":
        log.warning("the store has no labelled validation images; tuning on the training split")
        x_val, y_val = data.x["train"], data.y["train"]
    history: list[dict] = []
    text, scale = None, 100.0
    if config.zero_shot_prior or config.kind == "zeroshot":
        backbone = backbone_for_store(store, device, pretrained)
        text = label_text_embeddings(lambda p: backbone.encode_texts(p).cpu().numpy(), labels)
        scale = float(backbone.model.logit_scale.detach().exp()) if hasattr(backbone.model, "logit_scale") else 100.0
    if config.kind == "zeroshot":
        head = zero_shot_head(labels, store.model_id, text, scale, x_val if len(x_val) else None, y_val)
    else:
        if len(data.x["train"]) == 0:
            raise StoreError(f"store {store_path} has no labelled training images; embed a labelled source "
                             "(label sub-folders or a manifest with labels), or use --head zeroshot")
        head, history = fit_head(config, labels, store.model_id, data.x["train"], data.y["train"],
                                 x_val, y_val, text=text, logit_scale=scale, device=dev)
    out = Path(out)
    head.save(out)
    split = "test" if len(data.x["test"]) else "val"
    metrics = _evaluate(head, data.x[split], data.y[split], split, out, history)
    store.close()
    return head, metrics


def evaluate_head(store_path: str | Path, head_path: str | Path, split: str = "test",
                  out: str | Path | None = None) -> dict:
    """Evaluates a saved head on a store split; writes metrics JSON and plots into `out` (or the head)."""
    store = Store.open(store_path)
    head = EmotionHead.load(head_path, store.model_id, store.dim)
    data = labelled_splits(store, head.labels)
    store.close()
    if split not in data.x:
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    if len(data.x[split]) == 0:
        raise StoreError(f"store {store_path} has no labelled images in split {split!r}")
    return _evaluate(head, data.x[split], data.y[split], split, Path(out or head_path), None)


def _evaluate(head: EmotionHead, x: np.ndarray, y: np.ndarray, split: str, out: Path,
              history: list[dict] | None) -> dict:
    if len(x) == 0:
        return {"split": split, "count": 0}
    probs = head.predict_proba(x)
    metrics = {"split": split, "model_id": head.model_id, "head": head.config.kind,
               "alpha": head.alpha_, **report(probs, y, head.thresholds_, head.labels)}
    plots = write_plots(out, head.labels, metrics, probs, y, history)
    metrics["plots"] = [p.name for p in plots]
    if history:
        metrics["epochs"] = len(history)
        atomic_write_text(out / "history.json", json.dumps(history, indent=1) + "\n")
    atomic_write_text(out / f"metrics_{split}.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


class MicroBatcher:
    """Runs the model calls of concurrent requests as one batch.

    No request waits for company: whatever queued up while the previous batch ran goes into the
    next one, so a lone request is not slowed and a busy server makes few, large calls.
    Batching changes floating-point summation order, so scores can differ from a lone request in
    the last bits; that is why it is on by default only on the GPU, where it pays most.
    """

    def __init__(self, encode, max_batch: int = 64) -> None:
        self._encode, self._max_batch = encode, max_batch
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, name="micro-batcher", daemon=True).start()

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        """Gives (N, D) float32 vectors for a (N, 3, H, W) batch, computed together with others."""
        future: Future = Future()
        self._queue.put((batch, future))
        return future.result()

    def _run(self) -> None:
        while True:
            jobs = [self._queue.get()]
            size = len(jobs[0][0])
            while size < self._max_batch:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
                size += len(jobs[-1][0])
            try:
                vectors = self._encode(torch.cat([batch for batch, _ in jobs]))
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, future in jobs:
                    future.set_exception(exc)
                continue
            start = 0
            for batch, future in jobs:
                future.set_result(vectors[start:start + len(batch)])
                start += len(batch)


class Predictor:
    """Everything a prediction needs, loaded once: backbone, store (neighbours) and head."""

    def __init__(self, backbone: Backbone, store: Store, head: EmotionHead,
                 max_pixels: int = DEFAULT_MAX_PIXELS, micro_batch: bool | None = None) -> None:
        if head.model_id != store.model_id or head.dim != store.dim:
            raise StoreError(f"head is for {head.model_id!r} (dim {head.dim}) but the store is "
                             f"{store.model_id!r} (dim {store.dim}); retrain the head on this store")
        self.backbone, self.store, self.head, self.max_pixels = backbone, store, head, max_pixels
        self._min_side = max(backbone.preprocess.image_size)  # JPEGs decode at the scale the model needs
        self._lock = threading.Lock()  # one forward pass at a time; torch uses all cores per call
        if micro_batch is None:
            micro_batch = backbone.device.type == "cuda"
        self._batcher = MicroBatcher(self._encode) if micro_batch else None

    @classmethod
    def load(cls, store_path: str | Path, head_path: str | Path, device: str = "auto",
             labels_path: str | Path | None = None, pretrained: str | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS, micro_batch: bool | None = None) -> "Predictor":
        """Gives a predictor over a store and a head; `labels_path` swaps in another emoji policy."""
        store = Store.open(store_path)
        head = EmotionHead.load(head_path, store.model_id, store.dim)
        if labels_path:
            head.with_policy(load_label_config(labels_path))
        return cls(backbone_for_store(store, device, pretrained), store, head, max_pixels, micro_batch)

    @property
    def labels(self) -> list[str]:
        return self.head.labels

    def embed(self, images: list) -> np.ndarray:
        """Gives (N, D) float32 unit-norm vectors for RGB PIL images."""
        batch = torch.stack([self.backbone.transform(image) for image in images])
        return self._batcher(batch) if self._batcher else self._encode(batch)

    def _encode(self, batch: torch.Tensor) -> np.ndarray:
        with self._lock:
            return self.backbone.encode_images(batch).cpu().numpy()

    def predict_vectors(self, vectors: np.ndarray, names: list[str], k: int = 5) -> list[dict]:
        """Gives one result dict per vector: emotions, scores, emojis and k neighbours."""
        probs = self.head.predict_proba(vectors)
        chosen = decide(probs, self.head.thresholds_)
        neighbours = self.neighbours(vectors, k)
        results = []
        for name, p, c, near in zip(names, probs, chosen, neighbours):
            predicted = [label for label, on in zip(self.labels, c) if on]
            predicted.sort(key=lambda label: -p[self.labels.index(label)])
            allowed, blocked = emoji_policy(predicted, self.head.label_config)
            results.append({"image": name, "predicted_emotions": predicted, "allowed_emojis": allowed,
                            "blocked_emojis": blocked,
                            "emotion_scores": {l: round(float(s), 4) for l, s in zip(self.labels, p)},
                            "neighbours": near})
        return results

    def predict_images(self, images: list, names: list[str], k: int = 5) -> list[dict]:
        """Gives results for decoded RGB PIL images."""
        return self.predict_vectors(self.embed(images), names, k) if images else []

    def predict_files(self, named_bytes: list[tuple[str, bytes]], k: int = 5) -> list[dict]:
        """Gives a result per (name, bytes); an undecodable file gets {"image", "error", "kind"}."""
        decoded, errors = [], {}
        for i, (name, data) in enumerate(named_bytes):
            try:
                decoded.append((i, decode_image(data, self.max_pixels, self._min_side)))
            except ImageError as exc:
                errors[i] = {"image": name, "error": str(exc), "kind": exc.kind}
        good = self.predict_images([im for _, im in decoded], [named_bytes[i][0] for i, _ in decoded], k)
        by_index = dict(zip([i for i, _ in decoded], good)) | errors
        return [by_index[i] for i in range(len(named_bytes))]

    def neighbours(self, vectors: np.ndarray, k: int = 5) -> list[list[dict]]:
        """Gives, per vector, the k nearest stored images with id, path, labels and similarity."""
        if k <= 0 or len(self.store) == 0:
            return [[] for _ in range(len(vectors))]
        scores, ids = self.store.search(vectors, k)
        out = []
        for row_scores, row_ids in zip(scores, ids):
            valid = [(s, i) for s, i in zip(row_scores, row_ids) if i >= 0]
            items = self.store.items([int(i) for _, i in valid])
            out.append([{**item.to_json(), "similarity": round(float(s), 4)} for (s, _), item in zip(valid, items)])
        return out

    def neighbours_of_id(self, image_id: int, k: int = 5) -> list[dict]:
        """Gives the k nearest stored images to a stored image (itself excluded)."""
        self.store.items([image_id])  # raises KeyError for an unknown id
        vector = self.store.vector(image_id)[None, :]
        return [n for n in self.neighbours(vector, k + 1)[0] if n["id"] != image_id][:k]
