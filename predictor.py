"""Predicting emotions and emoji reactions: `load` gives a `Predictor`, which takes paths, bytes or PIL images.

The backbone, head and (optionally) store are loaded once; every image goes through the one decode
function of `emoreact.embed`, whichever way it comes in.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from emoreact.embed import (DEFAULT_MAX_PIXELS, Backbone, ImageError, ModelLoadError, ModelSpec, clean_caption,
                            decode_pil, load_backbone, ocr_reader, ocr_text, precision_hint, same_model,
                            text_vectors)
from emoreact.embed.clips import Clip, ClipSettings, decode_media
from emoreact.embed.frames import pool_vectors
from emoreact.heads import EmotionHead, deciding_channel, emoji_policy, frame_scores, rank_reactions
from emoreact.index import Store, StoreError
from emoreact.labels import LabelConfig, load_label_config

from .novelty import DEFAULT_UNSURE_ABOVE, NoveltyCalibration
from .pipeline import backbone_for_store
from .options import with_options
from .predictor_config import PredictorConfig
from .results import NEIGHBOUR, PREDICTION, UNREADABLE

ImageInput = Union[str, os.PathLike, bytes, Image.Image]  # what `predict` takes, alone or in a list
PostInput = Union[ImageInput, tuple]  # what `predict_many` takes: an image, or (image, caption)


def load(store: str | Path | None = None, head: str | Path | None = None, config: PredictorConfig | None = None,
         **options) -> "Predictor":
    """Gives a predictor for a trained head, with neighbours and novelty from `store` when one is given.

    `config` (a `PredictorConfig`, or the server's `WebConfig`) holds the settings; `options` are its
    fields by name (device="cpu", labels=..., unsure_above=0.95, ...) and win over it. `labels` swaps in
    another emoji policy (same label names). Without a store the backbone is the one the head was trained
    on (its manifest names it); `model`/`pretrained` re-point it, e.g. at a local weights file when the
    head was trained elsewhere. A result is `unsure` when its novelty (see `emoreact.novelty`) is at least
    `unsure_above`. `nprobe`/`candidates` override the search settings an approximate index was tuned to
    (see `Store.open`).
    """
    config = with_options(config or PredictorConfig(), options)
    if head is None:
        raise ValueError("load needs a trained head: emoreact.load(head=\"runs/fi-head\"), "
                         "and a store for neighbours (store=\"runs/fi\")")
    if store is not None:
        opened, trained, backbone = _open_store(store, config, head)
    else:
        opened, trained = None, EmotionHead.load(head)
        backbone = _backbone_for_head(trained, config)
    labels = config.labels
    if labels is not None:
        trained.with_policy(labels if isinstance(labels, LabelConfig) else load_label_config(labels))
    try:
        return Predictor(backbone, opened, trained, config.max_pixels, owns_store=True,
                         unsure_above=config.unsure_above, ocr=config.ocr, clips=clip_settings(config),
                         clip_pooling=config.clip_pooling)
    except BaseException:  # e.g. --ocr on without the extra: the store opened above is closed again
        if opened is not None:
            opened.close()
        raise


def load_for_neighbours(store: str | Path, config: PredictorConfig | None = None, **options) -> "Predictor":
    """Gives a predictor without a head, for `neighbours` only: the store's backbone and the same decode."""
    config = with_options(config or PredictorConfig(), options)
    opened, _, backbone = _open_store(store, config)
    return Predictor(backbone, opened, None, config.max_pixels, owns_store=True, clips=clip_settings(config))


def clip_settings(config: PredictorConfig) -> ClipSettings:
    """Gives the clip decoding settings of a predictor's config (its other limits keep their defaults)."""
    return ClipSettings(max_frames=config.max_frames, time_budget_s=config.clip_seconds)


def _open_store(store: str | Path, config: PredictorConfig,
                head: str | Path | None = None) -> tuple[Store, EmotionHead | None, Backbone]:
    """Gives (store, head checked against it or None, the store's backbone); the store is closed again
    when the head or the backbone fails to load."""
    opened = Store.open(store, nprobe=config.nprobe, candidates=config.candidates)
    try:
        trained = EmotionHead.load(head, opened.model_id, opened.dim) if head is not None else None
        return opened, trained, backbone_for_store(opened, config.device, config.pretrained, config.runtime,
                                                   config.precision)
    except BaseException:
        opened.close()
        raise


def _backbone_for_head(head: EmotionHead, config: PredictorConfig) -> Backbone:
    """Gives the backbone a head was trained on, as its manifest names it (or as re-pointed)."""
    source = head.backbone or {}
    parsed = ModelSpec.parse(head.model_id)
    spec = ModelSpec(model=config.model or source.get("model") or parsed.model,
                     pretrained=config.pretrained or source.get("pretrained") or parsed.pretrained,
                     runtime=config.runtime, precision=config.precision)
    try:
        backbone = load_backbone(spec, config.device)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc} (the head was trained on {head.model_id!r}; pass model=/pretrained= "
                             "naming its weights, or a store built with them)") from exc
    if not same_model(head.model_id, backbone.spec) or backbone.dim != head.dim:
        raise ModelLoadError(f"the head was trained on {head.model_id!r} (dim {head.dim}) but the weights given make "
                             f"{backbone.spec.model_id!r} (dim {backbone.dim})"
                             + (precision_hint(head.model_id, backbone.spec) or "; pass the same pretrained as at "
                                                                                "embed time"))
    return backbone


class Predictor:
    """Everything a prediction needs, loaded once: backbone, head and, for neighbours, a store."""

    def __init__(self, backbone: Backbone, store: Store | None, head: EmotionHead | None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, *, owns_store: bool = False,
                 unsure_above: float = DEFAULT_UNSURE_ABOVE, novelty: NoveltyCalibration | None = None,
                 ocr: str = "off", clips: ClipSettings | None = None, clip_pooling: str = "share") -> None:
        if store is not None and head is not None and (head.model_id != store.model_id or head.dim != store.dim):
            raise StoreError(f"head is for {head.model_id!r} (dim {head.dim}) but the store is "
                             f"{store.model_id!r} (dim {store.dim}); retrain the head on this store")
        self.backbone, self.store, self.head, self.max_pixels = backbone, store, head, max_pixels
        self._min_side = max(backbone.preprocess.image_size)  # JPEGs decode at the scale the model needs
        self._lock = threading.Lock()  # one forward pass at a time; torch uses all cores per call
        self._batching: Callable | None = None  # see batch_calls
        self._batcher = None
        self._owns_store = owns_store  # close() closes the store too (`load` opened it for this predictor)
        self.unsure_above = unsure_above
        # Calibrated once per store, at load (a seeded sample of at most 2,000 k=2 searches).
        self.novelty = novelty if novelty is not None or store is None or head is None \
            else NoveltyCalibration.from_store(store)
        self.batch_observer = None  # called with (images, seconds) after each model call (the server's metrics)
        self.ocr_mode = ocr
        self.clips = clips or ClipSettings()  # how animations and videos are decoded (embed/clips.py)
        self.clip_pooling = clip_pooling  # how a clip's frames make its scores (heads/frames.py)
        # OCR (embed.ocr): "on" needs the extra now; "auto" reads words only for a head that reads them.
        wanted = ocr == "on" or (ocr == "auto" and head is not None and head.reads_text)
        self._ocr = ocr_reader(ocr) if wanted else None

    def with_store(self, store: Store) -> "Predictor":
        """Gives a predictor with this one's backbone, head and novelty calibration over another (re-opened)
        store, which it owns; this one is left as it is (close it once no request uses it)."""
        twin = Predictor(self.backbone, store, self.head, self.max_pixels, owns_store=True,
                         unsure_above=self.unsure_above, novelty=self.novelty, ocr="off", clips=self.clips,
                         clip_pooling=self.clip_pooling)
        twin.ocr_mode, twin._ocr = self.ocr_mode, self._ocr
        twin.batch_observer = self.batch_observer
        return twin.batch_calls(self._batching) if self._batching is not None else twin

    @property
    def reads_words(self) -> bool:
        """Tells whether this predictor reads the words in images (OCR on, or auto for a head that reads words)."""
        return self._ocr is not None

    def warm(self) -> "Predictor":
        """Loads now what would otherwise load in the first call that needs it (the OCR models); gives self."""
        if self._ocr is not None:
            self._ocr.warm()
        return self

    def batch_calls(self, batching: Callable) -> "Predictor":
        """Gives this predictor with its model calls going through `batching(encode)`, an object called
        with each (N, 3, H, W) batch in place of `encode` and closed with the predictor (the server's
        `emoreact.web.batching.MicroBatcher`, which runs concurrent requests' calls as one batch)."""
        if self._batcher is not None:
            raise ValueError("this predictor already batches its calls")
        self._batching, self._batcher = batching, batching(self._encode)
        return self

    @property
    def labels(self) -> list[str]:
        return self.head.labels

    def close(self) -> None:
        """Releases what this predictor holds: stops its batching thread and closes the store it opened.
        Call it once no request uses the predictor any more (the web app does so after a reload)."""
        if self._batcher is not None:
            self._batcher.close()
        if self.store is not None and self._owns_store:
            self.store.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the Python API ------------------------------------------------------------------

    def predict(self, images: ImageInput | list[ImageInput], k: int = 5,
                caption: str | list[str | None] | None = None) -> dict | list[dict]:
        """Gives the result dict for one image (a path, encoded bytes or a PIL image) with its `caption`,
        or a list of them for a list (with a list of captions, or none). One bad image raises ImageError;
        in a list it gets {"image", "error", "kind"}."""
        if isinstance(images, (list, tuple)):
            captions = list(caption) if isinstance(caption, (list, tuple)) else [caption] * len(images)
            if len(captions) != len(images):
                raise ValueError(f"{len(captions)} captions for {len(images)} images; give one per image, or none")
            return self._predict_chunk(list(images), k, captions)
        if caption is not None and not isinstance(caption, str):
            raise TypeError(f"caption must be a string or None, not {type(caption).__name__}")
        name, image = self.decode(images)
        return self.predict_images([image], [name], k, [caption])[0]

    def predict_many(self, images: Iterable[PostInput], batch_size: int = 64, k: int = 5,
                     progress: bool = False) -> Iterator[dict]:
        """Yields one result per image, in order, reading `batch_size` images at a time: memory does not
        grow with the number of images. An item is an image or an (image, caption) pair. Bad images give
        {"image", "error", "kind"}, never an exception."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        total = len(images) if hasattr(images, "__len__") else None
        iterator = iter(images)
        with tqdm(total=total, unit="img", disable=not progress, desc="predict") as bar:
            while chunk := list(islice(iterator, batch_size)):
                pairs = [item if isinstance(item, tuple) else (item, None) for item in chunk]
                for _, caption in pairs:
                    if caption is not None and not isinstance(caption, str):
                        raise TypeError(f"a caption must be a string or None, not {type(caption).__name__}")
                yield from self._predict_chunk([image for image, _ in pairs], k, [caption for _, caption in pairs])
                bar.update(len(chunk))

    def decode(self, image: ImageInput) -> tuple[str, Image.Image | Clip]:
        """Gives (name, RGB image, or a Clip of chosen frames for an animation or video) for a path, bytes or
        PIL image, decoded as the embed job decodes. (A PIL image is a still: give a clip as bytes or a path.)"""
        if isinstance(image, Image.Image):
            name = getattr(image, "filename", "") or "<PIL image>"
            return name, decode_pil(image, self.max_pixels, self._min_side)[0]
        if isinstance(image, (bytes, bytearray, memoryview)):
            return "<bytes>", decode_media(bytes(image), self.max_pixels, self._min_side, self.clips)
        if isinstance(image, (str, os.PathLike)):
            try:
                data = Path(image).read_bytes()
            except OSError as exc:
                raise ImageError(f"cannot read {image}: {exc.strerror}; check the path") from exc
            return str(image), decode_media(data, self.max_pixels, self._min_side, self.clips)
        raise TypeError(f"cannot predict a {type(image).__name__}; pass a file path, encoded bytes or a PIL image")

    def _predict_chunk(self, images: list[ImageInput], k: int, captions: list[str | None] | None = None) -> list[dict]:
        captions = captions or [None] * len(images)
        decoded, errors = [], {}
        for i, image in enumerate(images):
            try:
                decoded.append((i, *self.decode(image)))
            except ImageError as exc:
                name = str(image) if isinstance(image, (str, os.PathLike)) else "<image>"
                errors[i] = UNREADABLE.answer(image=name, error=str(exc), kind=exc.kind)
        good = self.predict_images([im for _, _, im in decoded], [name for _, name, _ in decoded], k,
                                   [captions[i] for i, _, _ in decoded])
        by_index = dict(zip([i for i, _, _ in decoded], good)) | errors
        return [by_index[i] for i in range(len(images))]

    # ---- the building blocks the CLI and the web app use -----------------------------------

    def embed(self, images: list) -> np.ndarray:
        """Gives (N, D) float32 unit-norm vectors for RGB PIL images."""
        batch = torch.stack([self.backbone.transform(image) for image in images])
        return self._batcher(batch) if self._batcher else self._encode(batch)

    def _encode(self, batch: torch.Tensor) -> np.ndarray:
        with self._lock:
            started = time.perf_counter()
            vectors = self.backbone.encode_images(batch).cpu().numpy()
        if self.batch_observer is not None:
            self.batch_observer(len(batch), time.perf_counter() - started)
        return vectors

    def read_words(self, images: list, captions: list[str | None]) -> list[dict]:
        """Gives each post's words, {"caption": cleaned or None, "ocr": [lines]}, reading the RGB PIL
        images' text when OCR is on for this predictor."""
        read = [self._ocr.read(image).lines for image in images] if self._ocr is not None else [[]] * len(images)
        return [{"caption": clean_caption(caption), "ocr": [line.to_json() for line in lines]}
                for caption, lines in zip(captions, read)]

    def text_vectors(self, posts: list[dict]) -> np.ndarray:
        """Gives the (N, D) float32 text vectors of posts' words (zero rows for posts without)."""
        with self._lock:  # the text tower is the same model: one forward pass at a time
            return text_vectors(self.backbone.encode_texts, self.backbone.dim, [p["caption"] for p in posts],
                                [ocr_text(p["ocr"]) for p in posts])

    def predict_vectors(self, vectors: np.ndarray, names: list[str], k: int = 5,
                        posts: list[dict] | None = None, text: np.ndarray | None = None,
                        clips: list[tuple[Clip, np.ndarray] | None] | None = None) -> list[dict]:
        """Gives one result dict per vector: emotions, scores, emojis ranked best first with their fit
        scores, novelty and unsure (null without a store), with a store k neighbours, and each post's words
        (`posts`, from `read_words`) with their (N, D) `text` vectors (zero rows: no words) and the channels.
        `clips`: per vector None (a still) or (the Clip, its (F, D) frame vectors), the vector being their
        pooled one; a clip's answer pools its frames' (heads/frames.py) and carries their timeline."""
        if self.head is None:
            raise ValueError("this predictor has no head, so no emotions; load it with emoreact.load(head=HEAD)")
        posts = posts or [{"caption": None, "ocr": []}] * len(vectors)
        if text is None and self.head.reads_text and any(p["caption"] or p["ocr"] for p in posts):
            text = self.text_vectors(posts)
        probs = self.head.predict_proba(vectors, text=text)
        # An image-only head's one channel is its answer: no second forward pass on the hot path.
        image_scores, text_scores = self.head.channels(vectors, text) if self.head.reads_text else (probs, None)
        frames = self._frame_scores(clips or [None] * len(vectors), text, probs, image_scores)
        chosen = self.head.decide(probs, text)  # by the head's task: single-label heads always keep their top label
        if self.clip_pooling == "share":  # a clip shows what its frames show for 30% of its time
            for n, seen in enumerate(frames):
                shown = None if seen is None else seen.shown(np.asarray(clips[n][0].weights))
                if shown is not None and shown.any():
                    chosen[n] = shown
        novelty = [None] * len(vectors)
        if self.store is not None:
            # Novelty needs each image's nearest indexed image, even when no neighbours are asked for.
            near_all = self.neighbours(vectors, max(k, 1 if self.novelty is not None else 0))
            if self.novelty is not None:
                top1 = np.array([near[0]["similarity"] if near else -1.0 for near in near_all], np.float32)
                novelty = [float(v) for v in self.novelty.novelty(top1)]
            neighbours = [near[:k] for near in near_all]
        else:
            neighbours = [None] * len(vectors)
        config = self.head.label_config
        results = []
        for n, (name, p, c, near, new) in enumerate(zip(names, probs, chosen, neighbours, novelty)):
            predicted = [label for label, on in zip(self.labels, c) if on]
            read = None if text_scores is None or np.isnan(text_scores[n]).any() else text_scores[n]
            channel = dict(zip(self.labels, deciding_channel(image_scores[n], read)))
            clip, seen = (clips[n][0], frames[n]) if clips and clips[n] is not None else (None, None)
            if seen is not None:  # a clip's picture channel is its frames
                channel = {label: "frames" if by == "image" else by for label, by in channel.items()}
            predicted.sort(key=lambda label: -p[self.labels.index(label)])
            allowed, blocked = emoji_policy(predicted, config)
            fit = rank_reactions(allowed, predicted, dict(zip(self.labels, p.tolist())), config)
            results.append(PREDICTION.answer(
                image=name, predicted_emotions=predicted, allowed_emojis=list(fit), blocked_emojis=blocked,
                emotion_scores=dict(zip(self.labels, p.tolist())), reaction_scores=fit, novelty=new,
                unsure=None if new is None else new >= self.unsure_above, neighbours=near,
                neighbours_exact=None if self.store is None else self.store.index_settings.exact, text=posts[n],
                channels={"image": dict(zip(self.labels, image_scores[n].tolist())),
                          "text": None if read is None else dict(zip(self.labels, read.tolist())),
                          **({} if seen is None else {"frames": dict(zip(self.labels, seen.strongest().tolist()))})},
                decided_by={label: channel[label] for label in predicted},
                clip=None if clip is None else {
                    "format": clip.format, "duration_ms": clip.duration_ms, "frame_count": clip.frame_count,
                    "frames_used": clip.frames_used, "truncated": clip.truncated, "peaks": seen.peaks(self.labels)},
                timeline=None if seen is None else seen.timeline(self.labels)))
        return results

    def _frame_scores(self, clips: list[tuple[Clip, np.ndarray] | None], text: np.ndarray | None,
                      probs: np.ndarray, image_scores: np.ndarray) -> list:
        """Gives each clip's FrameScores (None for a still); with a pooling of the frames' scores ("share",
        "scores"), sets the clip's rows of `probs` (and of `image_scores`, the picture channel) to it."""
        out = []
        for n, entry in enumerate(clips):
            if entry is None:
                out.append(None)
                continue
            clip, vectors = entry
            words = None if text is None else text[n]
            seen = frame_scores(self.head, vectors, clip.times_ms, words)
            if self.clip_pooling != "features":  # features: the pooled vector's scores, as computed
                weights = np.asarray(clip.weights)
                probs[n] = seen.pool(self.clip_pooling, weights)
                if image_scores is not probs:  # a post head: its picture channel pools the frames' pictures alone
                    words_read = words is not None and np.any(words)
                    pictures = frame_scores(self.head, vectors, clip.times_ms) if words_read else seen
                    image_scores[n] = pictures.pool(self.clip_pooling, weights)
            out.append(seen)
        return out

    def predict_images(self, images: list, names: list[str], k: int = 5,
                       captions: list[str | None] | None = None) -> list[dict]:
        """Gives results for decoded RGB PIL images and Clips with their captions (None: none)."""
        if not images:
            return []
        # A clip's words are read in its first chosen frame (a meme GIF's caption stays put).
        posts = self.read_words([im.frames[0] if isinstance(im, Clip) else im for im in images],
                                captions or [None] * len(images))
        vectors, clips = self.embed_media(images)
        return self.predict_vectors(vectors, names, k, posts, clips=clips if any(clips) else None)

    def embed_media(self, images: list) -> tuple[np.ndarray, list[tuple[Clip, np.ndarray] | None]]:
        """Gives ((N, D) vectors, per item None or (Clip, its (F, D) frame vectors)) for RGB PIL images and
        Clips, every frame in one model call; a clip's vector pools its frames' by their share of its time."""
        frames = [frame for im in images for frame in (im.frames if isinstance(im, Clip) else [im])]
        encoded = self.embed(frames)
        vectors, clips, at = np.empty((len(images), encoded.shape[1]), np.float32), [], 0
        for n, im in enumerate(images):
            if isinstance(im, Clip):
                own = encoded[at:at + len(im.frames)]
                vectors[n] = pool_vectors(own, np.asarray(im.weights))
                clips.append((im, own))
                at += len(im.frames)
            else:
                vectors[n] = encoded[at]
                clips.append(None)
                at += 1
        return vectors, clips

    def predict_files(self, named_bytes: list[tuple[str, bytes]], k: int = 5,
                      captions: list[str | None] | None = None) -> list[dict]:
        """Gives a result per (name, bytes) with its caption; an undecodable file gets {"image", "error", "kind"}."""
        results = self._predict_chunk([data for _, data in named_bytes], k, captions)
        for (name, _), result in zip(named_bytes, results):
            result["image"] = name
        return results

    def neighbours(self, vectors: np.ndarray, k: int = 5) -> list[list[dict]]:
        """Gives, per vector, the k nearest stored images with id, path, labels and similarity."""
        if self.store is None:
            raise StoreError("this predictor has no store, so no neighbours; load it with store=STORE")
        if k <= 0 or len(self.store) == 0:
            return [[] for _ in range(len(vectors))]
        scores, ids = self.store.search(vectors, k)
        roots = self.store.manifest.get("source_roots", [])
        out = []
        for row_scores, row_ids in zip(scores, ids):
            valid = [(s, i) for s, i in zip(row_scores, row_ids) if i >= 0]
            items = self.store.items([int(i) for _, i in valid])
            clips = self.store.clips([item.id for item in items])
            out.append([NEIGHBOUR.answer(id=item.id, path=_shown_path(item.path, roots), labels=list(item.labels or []),
                                         split=item.split, similarity=s, clip=_stored_clip(clip))
                        for (s, _), item, clip in zip(valid, items, clips)])
        return out

    def neighbours_of_id(self, image_id: int, k: int = 5) -> list[dict]:
        """Gives the k nearest stored images to a stored image (itself excluded)."""
        if self.store is None:
            raise StoreError("this predictor has no store, so no neighbours; load it with store=STORE")
        self.store.items([image_id])  # raises KeyError for an unknown id
        vector = self.store.vector(image_id)[None, :]
        return [n for n in self.neighbours(vector, k + 1)[0] if n["id"] != image_id][:k]


def _stored_clip(clip: dict | None) -> dict | None:
    return None if clip is None else {key: clip[key] for key in ("format", "duration_ms", "frame_count")}


def _shown_path(path: str, roots: list[str]) -> str:
    """Gives a stored (absolute, server-side) path relative to the source root it was embedded from:
    the longest root holding it, else the latest root. Stores from before roots were kept give the
    path as stored (embed the same source again to record its root; nothing is re-embedded)."""
    if not roots or not os.path.isabs(path):
        return path
    holding = [r for r in roots if path.startswith(r.rstrip(os.sep) + os.sep)]
    return os.path.relpath(path, max(holding, key=len) if holding else roots[-1])
