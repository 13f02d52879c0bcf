"""Adding words to images stored without them: `embed SOURCE --store S --backfill`.

A store embedded before posts had words (EmoReact 0.3, or a job without captions and OCR) holds image
vectors only. A backfill gives its images their words without re-embedding a single picture: each
image's caption from SOURCE (a manifest with a `caption` column, matched by path) and, with OCR on, the
text read in its file; their text vectors (the store's own model's text tower) are written as text
shards beside the image shards, one commit per shard, so that a killed backfill resumes where it
stopped. Image shards that already have words are left as they are.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from emoreact.embed import ImageError, clean_caption, decode_image, ocr_reader, ocr_text, read_source, text_vectors
from emoreact.index import Store
from emoreact.labels import LabelConfig
from emoreact.pipeline import backbone_for_store

log = logging.getLogger(__name__)


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
        raise ValueError("nothing to add: the source has no captions and OCR is off; give a manifest with a "
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


def _read(reader, path: str, report: BackfillReport) -> list[dict] | None:
    """Gives the OCR lines of the file at `path`, or None when it can no longer be read."""
    try:
        image = decode_image(Path(path).read_bytes())
    except (OSError, ImageError) as exc:
        log.warning("backfill: cannot read %s again (%s); its words are its caption alone", path, exc)
        report.unreadable += 1
        return None
    return [line.to_json() for line in reader.read(image).lines]
