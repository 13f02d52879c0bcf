"""Bringing stored images up to what a post is now: `embed SOURCE --store S --backfill`.

Words: a store embedded before posts had words (EmoReact 0.3, or a job without captions and OCR) holds
image vectors only. A backfill gives its images their words without re-embedding a single picture: each
image's caption from SOURCE (a manifest with a `caption` column, matched by path) and, with OCR on, the
text read in its file; their text vectors (the store's own model's text tower) are written as text
shards beside the image shards, one commit per shard, so that a killed backfill resumes where it
stopped. Image shards that already have words are left as they are.

Clips: EmoReact 0.3 stored an animated GIF, WebP or PNG by its first frame. A backfill re-embeds each
such file as a clip (frames chosen by time, pooled: embed/clips.py) and overwrites its vector in place,
so its id, labels, split, words and corrections stay; the index takes the new vector. A batch at a time,
each step redone by the next run if killed (index/writing.py `rewrite_as_clips`); files already stored
as clips, and files whose content changed since they were stored, are left alone.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from emoreact.embed import ImageError, clean_caption, decode_image, ocr_reader, ocr_text, read_source, text_vectors
from emoreact.embed.clips import Clip, ClipSettings, decode_media, is_clip
from emoreact.embed.frames import encode_pooled
from emoreact.embed.job import clip_record
from emoreact.index import Store
from emoreact.labels import LabelConfig
from emoreact.pipeline import backbone_for_store

log = logging.getLogger(__name__)


class NothingToAdd(ValueError):
    """A words backfill was asked for with neither captions nor OCR."""


def backfill(source: str | Path | None, store_path: str | Path, labels: LabelConfig, *, ocr: str = "off",
             device: str = "auto", pretrained: str | None = None, clips: ClipSettings | None = None,
             wait: bool = False, progress: bool = False) -> dict:
    """Re-embeds animations stored by their first frame as clips, then adds words to the images without
    (when `source` has captions or `ocr` reads); gives both reports as one JSON object."""
    out = backfill_clips(store_path, device=device, pretrained=pretrained, clips=clips, wait=wait,
                         progress=progress).to_json()
    try:
        out |= backfill_words(source, store_path, labels, ocr=ocr, device=device, pretrained=pretrained, wait=wait,
                              progress=progress).to_json()
    except NothingToAdd as exc:
        out["backfill"] = {"words": f"none added: {exc}"}
    return out


@dataclass
class BackfillReport:
    """What a backfill did."""

    shards: int = 0  # image shards given a text shard
    images_with_words: int = 0
    unreadable: int = 0  # files that could not be read again for OCR (their caption still counts)
    left_alone: int = 0  # image shards that already had words

    def to_json(self) -> dict:
        return {"backfill": {"shards": self.shards, "images_with_words": self.images_with_words,
                             "unreadable": self.unreadable, "shards_with_words_already": self.left_alone}}


def backfill_words(source: str | Path | None, store_path: str | Path, labels: LabelConfig, *, ocr: str = "off",
                   device: str = "auto", pretrained: str | None = None, wait: bool = False,
                   progress: bool = False) -> BackfillReport:
    """Gives the images of `store_path` that have no words their caption from `source` (None: no captions) and,
    with `ocr` on or auto, the text read in their files; gives the report. Nothing is re-embedded."""
    captions = {}
    if source is not None:
        captions = {str(record.path): record.caption for record in read_source(source, labels) if record.caption}
    reader = ocr_reader(ocr)
    if not captions and reader is None:
        raise NothingToAdd("nothing to add: the source has no captions and OCR is off; give a manifest with a "
                         "`caption` column, or --ocr on to read the words in the stored images")
    report = BackfillReport()
    with Store.open_for_writing(store_path, wait) as store:
        backbone = backbone_for_store(store, device, pretrained)
        todo = store.shards_without_texts()
        report.left_alone = len(store.shards()) - len(todo)
        live_ids = store.live_ids()
        for shard in tqdm(todo, unit="shard", desc="backfill", disable=not progress):
            ids = np.arange(shard.first_id, shard.first_id + shard.count)
            lo, hi = np.searchsorted(live_ids, [shard.first_id, shard.first_id + shard.count])
            words: dict[int, tuple[str | None, str | None]] = {}
            for item in store.items(live_ids[lo:hi].tolist()):
                image_id = item.id
                lines = _read(reader, item.path, report) if reader is not None else None
                caption = clean_caption(captions.get(item.path))
                if caption or lines:
                    words[image_id] = (caption, json.dumps(lines) if lines else None)
            if not words:
                continue
            posted = sorted(words)
            vectors = np.zeros((len(ids), store.dim), np.float32)
            vectors[np.asarray(posted) - shard.first_id] = text_vectors(
                backbone.encode_texts, backbone.dim, [words[i][0] for i in posted],
                [ocr_text(json.loads(words[i][1])) if words[i][1] else None for i in posted])
            store.add_texts(shard.first_id, words, vectors)
            report.shards += 1
            report.images_with_words += len(words)
    log.info("backfill: %s", report.to_json())
    return report


@dataclass
class ClipBackfillReport:
    """What re-embedding stored animations as clips did."""

    clips: int = 0  # stored images re-embedded as clips
    already_clips: int = 0
    changed: int = 0  # files whose content is no longer what was stored (left as they are)
    unreadable: int = 0

    def to_json(self) -> dict:
        return {"clips": {"re_embedded": self.clips, "already_clips": self.already_clips,
                          "changed_since_stored": self.changed, "unreadable": self.unreadable}}


ANIMATED_SUFFIXES = (".gif", ".webp", ".png", ".apng")  # what 0.3 could have stored by its first frame
_BATCH = 32  # clips re-embedded and committed at a time


def backfill_clips(store_path: str | Path, *, device: str = "auto", pretrained: str | None = None,
                   clips: ClipSettings | None = None, wait: bool = False, progress: bool = False) -> ClipBackfillReport:
    """Re-embeds the animations `store_path` holds by their first frame as clips, in place; gives the report."""
    clips = clips or ClipSettings()
    report = ClipBackfillReport()
    with Store.open_for_writing(store_path, wait) as store:
        backbone = backbone_for_store(store, device, pretrained)
        live = store.live_ids().tolist()
        pending: list[tuple[int, Clip]] = []
        for start in tqdm(range(0, len(live), 1024), unit="k images", desc="clips", disable=not progress):
            ids = live[start:start + 1024]
            for item, stored in zip(store.items(ids), store.clips(ids)):
                if stored is not None:
                    report.already_clips += 1
                elif item.path.lower().endswith(ANIMATED_SUFFIXES):
                    clip = _clip_of(item, clips, report)
                    if clip is not None:
                        pending.append((item.id, clip))
                if len(pending) >= _BATCH:
                    _rewrite(store, backbone, pending, report)
                    pending = []
        _rewrite(store, backbone, pending, report)
    log.info("backfill: %s", report.to_json())
    return report


def _clip_of(item, settings: ClipSettings, report: ClipBackfillReport) -> Clip | None:
    """Gives the stored image's file as a Clip, or None: a still, unreadable, or changed since it was stored."""
    try:
        data = Path(item.path).read_bytes()
    except OSError as exc:
        log.warning("backfill: cannot read %s again (%s); its vector stays as it is", item.path, exc)
        report.unreadable += 1
        return None
    if not is_clip(data):
        return None
    if hashlib.sha256(data).hexdigest() != item.sha256:
        log.warning("backfill: %s changed since it was stored; embed it again to store the new file", item.path)
        report.changed += 1
        return None
    try:
        clip = decode_media(data, settings=settings)
    except ImageError as exc:
        log.warning("backfill: %s no longer decodes (%s); its vector stays as it is", item.path, exc)
        report.unreadable += 1
        return None
    return clip if isinstance(clip, Clip) else None


def _rewrite(store: Store, backbone, pending: list[tuple[int, Clip]], report: ClipBackfillReport) -> None:
    if not pending:
        return
    tensors = [torch.stack([backbone.transform(frame) for frame in clip.frames]) for _, clip in pending]
    vectors = encode_pooled(lambda pixels: backbone.encode_images(pixels.to(backbone.device)).cpu().numpy(), tensors,
                            [clip.weights for _, clip in pending])
    store.rewrite_as_clips({image_id: vectors[n] for n, (image_id, _) in enumerate(pending)},
                           {image_id: clip_record(clip) for image_id, clip in pending})
    report.clips += len(pending)


def _read(reader, path: str, report: BackfillReport) -> list[dict] | None:
    """Gives the OCR lines of the file at `path`, or None when it can no longer be read."""
    try:
        image = decode_image(Path(path).read_bytes())
    except (OSError, ImageError) as exc:
        log.warning("backfill: cannot read %s again (%s); its words are its caption alone", path, exc)
        report.unreadable += 1
        return None
    return [line.to_json() for line in reader.read(image).lines]
