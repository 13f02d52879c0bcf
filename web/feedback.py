"""POST /api/feedback (a moderator's correction) and GET /api/feedback (the corrections since a time)."""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import threading
from pathlib import Path

from flask import abort, g, jsonify, request
from flask_openapi3 import APIBlueprint, Tag
from PIL import Image
from pydantic import ValidationError

from emoreact.embed import ImageError
from emoreact.embed.clips import Clip
from emoreact.embed.job import clip_record
from emoreact.index import StoreError
from emoreact.index.feedback import FeedbackLog, add_upload, feedback_path, utc_time

from . import schemas as s
from .auth import too_many
from .resources import predictor, resources

log = logging.getLogger(__name__)

_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif"}
_STORE_WAIT_S = 10  # an upload waits this long for another upload or a retrain before answering 409
_opening = threading.Lock()


def post_feedback():
    """Record a correction: the right labels for an indexed image (JSON) or for an uploaded one (multipart).

    JSON `{"id": N, "labels": ["sad"], "note": "..."}` corrects indexed image N. Multipart with an
    `image` file and `labels` (comma-separated) adds the image to the store (under STORE/feedback/images,
    split train) and records the correction. Either way the labels the served head predicted and its id
    are kept beside the correction, with the API key's name.
    """
    res = resources()
    wait = res.limiter.take(g.key_name)
    if wait > 0:
        return too_many(wait, res.config.feedback_per_minute)
    served = predictor()
    if request.mimetype == "application/json":
        body = _model(s.FeedbackJson, request.get_json(silent=True))
        labels = _labels(body.labels, served.labels)
        try:
            [item] = served.store.items([body.id])
        except KeyError:
            abort(404, f"no indexed image has id {body.id}; ids come from /api/neighbours and /api/predict answers")
        vector = served.store.vector(body.id)[None, :]
        image_id, sha256, note, source, clips = body.id, item.sha256, body.note, "indexed", None
    elif request.mimetype == "multipart/form-data":
        form = _model(s.FeedbackForm, {"labels": request.form.get("labels"), "note": request.form.get("note"),
                                       "image": request.files.get("image")})
        if len(request.files.getlist("image")) != 1 or len(request.form.getlist("labels")) > 1:
            abort(400, "send exactly one image in the field 'image' and the labels once, comma-separated")
        labels = _labels([p for p in form.labels.split(",")], served.labels)
        data = form.image.read()
        try:
            _, image = served.decode(data)
        except ImageError as exc:
            abort({"invalid": 400, "unsupported": 415, "too_large": 413}[exc.kind], str(exc))
        vector, clips = served.embed_media([image])  # a clip: its pooled vector, stored as the embed job stores it
        sha256, note, source = hashlib.sha256(data).hexdigest(), form.note, "upload"
        image_id = _store_upload(data, sha256, vector, labels, image if isinstance(image, Clip) else None)
    else:
        abort(415, f"send JSON (application/json) for an indexed image or multipart/form-data with an 'image' file, "
                   f"not {request.mimetype or 'a body without a Content-Type'}")
    predicted = served.predict_vectors(vector, ["feedback"], k=0, clips=clips)[0]["predicted_emotions"]
    entry = _log().add(key_name=g.key_name, image_id=image_id, sha256=sha256, labels=labels, predicted=predicted,
                       source=source, note=note, head_id=head_id(res.config.head))
    res.metrics.feedback.labels(source).inc()
    log.info("correction %d by %s: image %d is %s (the head said %s)", entry["id"], g.key_name, image_id,
             labels, predicted)
    return jsonify(entry), 201


def list_feedback(query: s.FeedbackQuery):
    """The corrections recorded after `since` (all without it), oldest first, at most `limit`."""
    since = utc_time(query.since) if query.since is not None else None
    return jsonify(feedback=_log().entries(since, query.limit))


def _model(model, data):
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        abort(400, f"{problems}. Send {model.__doc__.splitlines()[0].rstrip('.')}")


def _labels(given: list[str], known: list[str]) -> list[str]:
    names = [name.strip() for name in given if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        abort(400, f"unknown label {unknown[0][:40]!r}; the labels are {', '.join(known)}")
    if not names:
        abort(400, f"no labels were given; send at least one of {', '.join(known)}")
    return [name for name in known if name in names]  # label order, each once


def _store_upload(data: bytes, sha256: str, vector, labels: list[str], clip: Clip | None = None) -> int:
    res = resources()
    root = predictor().store.root
    if clip is not None:
        size, suffix = clip.size, "." + clip.format.lower()
    else:
        with Image.open(io.BytesIO(data)) as opened:  # the header only: the size as stored in the file
            size, suffix = opened.size, _SUFFIX.get(opened.format or "", ".img")
    if not res.store_lock.acquire(timeout=_STORE_WAIT_S):
        _busy("a retrain is reading the store; correct the image again once it has finished "
              "(GET /api/admin/retrain)")
    try:
        image_id = add_upload(root, data, sha256, vector, size, labels, suffix,
                              None if clip is None else clip_record(clip))
        res.refresh_store()  # new requests see the image (neighbours, thumbnail)
    except StoreError as exc:
        _busy(f"the image could not be added to the store: {exc}")
    finally:
        res.store_lock.release()
    return image_id


def _busy(message: str) -> None:
    response = jsonify(error=message)
    response.status_code, response.headers["Retry-After"] = 409, "60"
    abort(response)


def _log() -> FeedbackLog:
    res = resources()
    with _opening:
        if res.feedback is None:
            try:
                res.feedback = FeedbackLog(predictor().store.root)
            except StoreError as exc:
                response = jsonify(error=str(exc))
                response.status_code = 503
                abort(response)
    return res.feedback


def stored_feedback() -> int | None:
    """Gives how many corrections the served store holds (0 before the first; None when unreadable)."""
    res = resources()
    if res.feedback is not None:
        return len(res.feedback)
    root = predictor().store.root
    if not feedback_path(root).exists():
        return 0
    try:  # read-only: /healthz must answer even where the store folder cannot be written
        log_ = FeedbackLog(root, readonly=True)
    except StoreError:
        return None
    try:
        return len(log_)
    finally:
        log_.close()


@functools.lru_cache(maxsize=16)
def _head_id(folder: str, stamp: tuple) -> str:
    digest = hashlib.sha256()
    for name in ("manifest.json", "weights.safetensors"):
        digest.update((Path(folder) / name).read_bytes())
    return digest.hexdigest()[:16]


def head_id(folder: Path | None) -> str | None:
    """Gives the served head's id: the first 16 hex digits of the sha256 of its manifest and weights."""
    if folder is None:
        return None
    try:
        stamp = tuple((Path(folder) / n).stat().st_mtime_ns for n in ("manifest.json", "weights.safetensors"))
        return _head_id(str(folder), stamp)
    except OSError:
        return None


def feedback_routes(bp: APIBlueprint) -> None:
    """Adds the feedback operations to the /api blueprint."""
    tags = [Tag(name="feedback")]
    bp.post("/feedback", tags=tags, summary="Correct a prediction (needs an API key)",
            responses={201: s.FeedbackEntry, **{c: s.ErrorBody for c in (400, 401, 404, 409, 413, 415, 429, 503)}}
            )(post_feedback)  # its request body is written into the document by web/openapi.py
    bp.get("/feedback", tags=tags, summary="Corrections recorded after a time (needs an API key)",
           responses={200: s.FeedbackList, **{c: s.ErrorBody for c in (400, 401, 503)}})(list_feedback)
