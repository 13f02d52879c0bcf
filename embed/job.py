"""The batch embedding job in this process (the local engine on one device): records -> decode +
preprocess (DataLoader workers) -> CLIP -> store.

Resumable: files whose content hash is already in the store are not decoded again; vectors
are committed shard by shard, so a killed job loses at most one shard of work.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from emoreact.index import Store
from emoreact.prefetch import prefetched

from .config import EmbedConfig  # noqa: F401 - public through this module too
from .engines import run_engine
from .fastpath import decode_jpegs, fast_path_eligible, preprocess_tensors
from .identity import ModelSpec
from .clips import Clip, ClipSettings, decode_media, is_clip
from .frames import encode_pooled
from .images import ImageError, decode_image_with_size
from .models import Backbone, load_backbone
from .ocr import ocr_reader
from .readers import Record
from .writer import ShardWriter, post_text_vectors, split_for  # noqa: F401 - split_for is public here too


@dataclass
class EmbedReport:
    """What a job did; `skipped` maps a reason to its count."""

    added: int = 0
    already_present: int = 0
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    near_duplicate_groups_moved: int = 0  # groups of near-duplicates that straddled splits and were united
    near_duplicate_images_moved: int = 0  # images that changed split for it
    engine: str = "local"  # the engine that ran, by its name in engines.ENGINES: local (this machine's processes), ray
    nodes: int = 1  # machines that ran the model
    workers: int = 1  # model workers: processes (local, one per device) or Ray actors
    images_per_node: dict = field(default_factory=dict)  # Ray: images each node embedded, by node
    ray_cluster: dict = field(default_factory=dict)  # Ray: the cluster's address, authenticated, ray_version

    @property
    def images_per_second(self) -> float:
        return self.added / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict:
        return {"added": self.added, "already_present": self.already_present,
                "skipped": sum(self.skipped.values()), "skipped_by_reason": dict(self.skipped),
                "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 1),
                "near_duplicates_moved": {"groups": self.near_duplicate_groups_moved,
                                          "images": self.near_duplicate_images_moved},
                "engine": self.engine, "nodes": self.nodes, "workers": self.workers,
                **({"images_per_node": dict(self.images_per_node)} if self.images_per_node else {}),
                **({"ray_cluster": dict(self.ray_cluster)} if self.ray_cluster else {})}


class _ImageFiles(Dataset):
    """Reads, hashes, decodes and preprocesses one record; never raises for a bad file."""

    def __init__(self, records: list[Record], transform, known: set[str], max_pixels: int,
                 fast_jpeg: bool = False, min_side: int | None = None, ocr=None, clips: ClipSettings | None = None) -> None:
        self.records, self.transform, self.known, self.max_pixels = records, transform, known, max_pixels
        self.fast_jpeg, self.min_side, self.ocr, self.clips = fast_jpeg, min_side, ocr, clips

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return read_item(i, self.records[i].path, self.known, self.transform, self.max_pixels, self.min_side,
                         self.fast_jpeg, self.ocr, self.clips)


def read_item(i: int, path: Path, known: Container[str], transform, max_pixels: int, min_side: int | None,
              fast_jpeg: bool = False, ocr=None, clips: ClipSettings | None = None) -> dict:
    """Gives record `i`'s item for the writer: its hash and `known`, an `error`, the raw `jpeg` bytes (fast
    path), or the preprocessed `tensor` (3, H, W) float32 with the image's `size` and `bytes` and, with an
    `ocr` reader (embed.ocr), the `ocr` lines read in it. An animation or video (decoded as `clips` says)
    gives its chosen frames' `tensor` (F, 3, H, W), their `weights` and its `clip` record (the store's clips
    table). Never raises for a bad file: every engine reads, hashes and decodes a file through this one function."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return {"i": i, "sha": None, "error": f"unreadable file: {exc.strerror or exc}"}
    sha = hashlib.sha256(data).hexdigest()
    if sha in known:
        return {"i": i, "sha": sha, "known": True}
    if fast_jpeg and ocr is None and fast_path_eligible(data, max_pixels):
        return {"i": i, "sha": sha, "jpeg": data, "bytes": len(data)}
    try:
        # Words are read at full size: a JPEG decoded at the model's scale loses small text.
        scale = None if ocr is not None else min_side
        image, size = (decode_media(data, max_pixels, scale, clips or ClipSettings()), None) if is_clip(data) \
            else decode_image_with_size(data, max_pixels, scale)
    except ImageError as exc:
        return {"i": i, "sha": sha, "error": str(exc)}
    if isinstance(image, Clip):
        item = {"i": i, "sha": sha, "tensor": torch.stack([transform(frame) for frame in image.frames]),
                "weights": [float(w) for w in image.weights], "clip": clip_record(image), "size": image.size,
                "bytes": len(data)}
        image = image.frames[0]  # its words are read in its first chosen frame
    else:
        item = {"i": i, "sha": sha, "tensor": transform(image), "size": size, "bytes": len(data)}
    if ocr is not None:
        item["ocr"] = [line.to_json() for line in ocr.read(image).lines]
    return item


def clip_record(clip: Clip) -> dict:
    """Gives a clip's row of the store's clips table."""
    return {"format": clip.format, "duration_ms": int(clip.duration_ms), "frame_count": int(clip.frame_count),
            "frames_used": int(clip.frames_used)}


def _collate(items: list[dict]) -> tuple[list[dict], torch.Tensor | None]:
    """Gives (items, JPEG bytes of the batch as one uint8 tensor), the bytes cut out of the items.

    From a DataLoader worker a tensor travels as one shared-memory block, while bytes are pickled
    through a pipe: at thousands of photos a second that pipe, drained by one process, was the job's
    limit. Tensors of the PIL path are stacked only after bad files are set aside."""
    jpegs = [item for item in items if "jpeg" in item]
    if not jpegs:
        return items, None
    blob = torch.frombuffer(bytearray(b"".join(item["jpeg"] for item in jpegs)), dtype=torch.uint8)
    start = 0
    for item in jpegs:
        end = start + len(item.pop("jpeg"))
        item["jpeg_span"] = (start, end)
        start = end
    return items, blob


def _uncollate(batch: tuple[list[dict], torch.Tensor | None]) -> list[dict]:
    """Gives the items of a collated batch, each JPEG as a uint8 tensor viewing the batch's block."""
    items, blob = batch
    for item in items:
        if "jpeg_span" in item:
            start, end = item.pop("jpeg_span")
            item["jpeg"] = blob[start:end]
    return items


def run_embed_job(records: list[Record], store: Store, backbone: Backbone,
                  config: EmbedConfig = EmbedConfig(), known: set[str] = frozenset()) -> EmbedReport:
    """Embeds the records not yet in `store` (nor in `known`) in this process, records skipped files, finishes
    the store; gives the report."""
    return run_engine(LocalEngine(str(backbone.device)), records, store, backbone, config, known)


@dataclass(frozen=True)
class LocalEngine:
    """The embed job in this process on one device: DataLoader workers read and decode, the model runs here."""

    device: str = "auto"

    def backbone(self, spec: ModelSpec) -> Backbone:
        """Gives the model loaded on this engine's device."""
        return load_backbone(spec, self.device)

    def embed(self, records: list[Record], store: Store, backbone: Backbone, config: EmbedConfig,
              known: set[str]) -> EmbedReport:
        """Adds the records not in `known` to `store`, shard by shard; gives the report (see `engines.Engine`)."""
        report = EmbedReport()
        fast = config.fast_jpeg if config.fast_jpeg is not None else backbone.device.type == "cuda"
        min_side = max(backbone.preprocess.image_size) if config.reduced_jpeg_decode else None
        dataset = _ImageFiles(records, backbone.transform, known, config.max_pixels, fast, min_side,
                              ocr_reader(config.ocr), config.clips())
        loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers,
                            collate_fn=_collate, pin_memory=backbone.device.type == "cuda",
                            persistent_workers=False, prefetch_factor=4 if config.workers else None)
        writer = ShardWriter(store, records, report, config.shard_size)
        bar = tqdm(total=len(records), unit="img", desc="embed", disable=not config.progress, smoothing=0.1)
        batches = _decoded_batches(loader, backbone, dataset, config.decode_ahead if fast else None)
        with contextlib.closing(batches):  # a failure here stops the decoding thread at once, not at collection
            for batch in batches:
                good = writer.sort(batch)
                if good:
                    vectors = encode_pooled(lambda pixels: backbone.encode_images(pixels).cpu().numpy(),
                                            [item["tensor"].to(backbone.device) for _, item in good],
                                            [item.get("weights") for _, item in good])
                    writer.add(good, vectors, post_text_vectors(backbone, good))
                bar.update(len(batch))
        bar.close()
        writer.flush()
        return report


def _decoded_batches(loader, backbone: Backbone, dataset: _ImageFiles, ahead: int | None) -> Iterator[list[dict]]:
    """Gives the loader's batches, in order, with their JPEGs decoded (`ahead` None: no fast path).

    With `ahead` > 0 a thread decodes and preprocesses up to `ahead` batches ahead while the model runs
    the current one; on a GPU it works on a CUDA stream of its own, so nvJPEG and the resize kernels
    overlap the model's kernels instead of taking turns with them."""
    batches = (_uncollate(batch) for batch in loader)
    if ahead is None:
        yield from batches
        return
    if not ahead:
        for batch in batches:
            _decode_fast(batch, backbone, dataset)
            yield batch
        return
    cuda = backbone.device.type == "cuda"
    side = torch.cuda.Stream(backbone.device) if cuda else None

    def decode() -> Iterator[tuple[list[dict], torch.cuda.Event | None]]:  # runs on prefetched's thread
        for batch in batches:
            with torch.cuda.stream(side) if cuda else contextlib.nullcontext():
                _decode_fast(batch, backbone, dataset)
                done = side.record_event() if cuda else None
            yield batch, done

    with contextlib.closing(prefetched(decode(), depth=ahead, name="emoreact-decode-ahead")) as decoded:
        for batch, done in decoded:
            if cuda:
                main = torch.cuda.current_stream(backbone.device)
                main.wait_event(done)
                for item in batch:
                    if "tensor" in item and item["tensor"].is_cuda:
                        item["tensor"].record_stream(main)  # made on the side stream, read on this one
            yield batch


def _decode_fast(batch: list[dict], backbone: Backbone, dataset: _ImageFiles) -> None:
    """Decodes the batch's JPEGs together on the model's device; failures take the PIL path."""
    jpegs = [item for item in batch if "jpeg" in item]
    if not jpegs:
        return
    decoded = decode_jpegs([item["jpeg"] for item in jpegs], backbone.device)
    good = [(item, image) for item, image in zip(jpegs, decoded) if image is not None]
    tensors = preprocess_tensors([image for _, image in good], backbone.preprocess) if good else []
    for (item, image), tensor in zip(good, tensors):
        del item["jpeg"]
        item.update(tensor=tensor, size=(image.shape[2], image.shape[1]))
    for item in jpegs:
        if "jpeg" not in item:
            continue
        data = item.pop("jpeg").numpy().tobytes()
        try:
            pil, size = decode_image_with_size(data, dataset.max_pixels, dataset.min_side)
        except ImageError as exc:
            item["error"] = str(exc)
            continue
        item.update(tensor=dataset.transform(pil), size=size)
