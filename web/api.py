"""The JSON API under /api, and /healthz. Views are thin: the work happens in `pipeline.Predictor`."""
from __future__ import annotations

import logging

from flask import abort, current_app, jsonify, request
from flask_openapi3 import APIBlueprint, Tag

from emoreact.embed import ImageError

from . import schemas as s
from .admin import admin_routes
from .feedback import feedback_routes, stored_feedback
from .resources import Reload, Resources, predictor, release_predictor, resources  # noqa: F401 - re-exported
from .thumbnails import ThumbnailMissing

log = logging.getLogger(__name__)

STATUS_OF_KIND = {"invalid": 400, "unsupported": 415, "too_large": 413}  # ImageError.kind -> HTTP status
EMOJI_RULE = ("allowed = union of the predicted labels' allowed emojis, minus every emoji that any "
              "predicted label blocks, ordered best first by fit score = the emoji's weight x the score of "
              "the best predicted label that allows it; blocked = union of their blocked emojis")


def predict(form: s.ImageForm, query: s.KQuery):
    """Predict emotions, emoji reactions and neighbours for each uploaded image.

    Answers 200 when at least one file could be used; a file that could not gets its own
    `{"filename", "error", "kind", "status"}` entry. When no file could be used the answer takes
    that file's status (400 not an image or damaged, 415 unsupported format (the message lists the accepted
    ones), 413 over a limit (pixels, frames, a clip's length; the message names it)). An animated GIF, WebP
    or PNG, or a video (MP4, MOV, WebM, with the `video` extra installed) is a clip: one answer from its
    frames chosen by time, with its `timeline`.
    """
    config = resources().config
    if len(form.image) > config.max_files:
        abort(413, f"{len(form.image)} files in one request; send at most {config.max_files} at a time")
    if form.k is not None and query.k is not None:
        _k(query.k, minimum=0)  # the form's k wins, but a query k out of range is still an error
    k = _k(form.k if form.k is not None else query.k, minimum=0)
    captions = request.form.getlist("caption") or None  # the text as sent (see schemas.CaptionText)
    if captions is not None and len(captions) != len(form.image):
        abort(400, f"{len(captions)} captions for {len(form.image)} images: send no 'caption' field, or one per "
                   "image in the order of the images (an empty one for an image without)")
    files = [(_filename(f, i), f.read()) for i, f in enumerate(form.image)]
    results = [_with_status(r) for r in predictor().predict_files(files, k, captions)]
    failed = [r for r in results if "error" in r]
    if len(failed) < len(results):
        return jsonify(results=results)
    statuses = {r["status"] for r in failed}
    status = statuses.pop() if len(statuses) == 1 else 400
    if len(failed) == 1:
        message = f"{failed[0]['filename']}: {failed[0]['error']}"
    else:
        message = f"none of the {len(failed)} files could be used: " + "; ".join(
            f"{r['filename']}: {r['error']}" for r in failed)
    return jsonify(error=message, results=results), status


def neighbours_of_id(query: s.NeighboursQuery):
    """The k indexed images nearest to an indexed image (itself left out), most similar first."""
    _sent_once("id")
    k = _k(query.k, minimum=1)
    try:
        near = predictor().neighbours_of_id(query.id, k)
    except KeyError:
        abort(404, _unknown_id(query.id))
    return jsonify(id=query.id, neighbours=near)


def neighbours_of_upload(form: s.OneImageForm):
    """The k indexed images nearest to one uploaded image, most similar first."""
    if len(request.files.getlist("image")) > 1:
        abort(400, "send exactly one image to /api/neighbours; /api/predict takes many")
    served = predictor()
    k = _k(form.k, minimum=1)
    name = _filename(form.image, 0)
    try:
        _, image = served.decode(form.image.read())  # as predict and the embed job decode it
    except ImageError as exc:
        abort(STATUS_OF_KIND[exc.kind], f"{name}: {exc}")
    vectors, _ = served.embed_media([image])  # a clip: its pooled vector, as stored
    near = served.neighbours(vectors, k)[0]
    return jsonify(image=name, neighbours=near)


def thumbnail(path: s.ImagePath):
    """A JPEG thumbnail of an indexed image, found by its id (never by a file path)."""
    res = resources()
    try:
        [item] = predictor().store.items([path.image_id])
    except KeyError:
        abort(404, _unknown_id(path.image_id))
    try:
        data = res.thumbnails.get(item)
    except ThumbnailMissing as exc:
        abort(404, str(exc))
    response = current_app.response_class(data, mimetype="image/jpeg")
    response.set_etag(res.thumbnails.etag(item))
    response.cache_control.public = True
    response.cache_control.max_age = res.config.thumbnail_max_age
    return response.make_conditional(request)


def labels():
    """The labels, their decision thresholds and the emoji policy in force."""
    head = predictor().head
    policy = [{"name": spec.name, "allowed": list(spec.allowed), "blocked": list(spec.blocked),
               "threshold": round(float(t), 4)} for spec, t in zip(head.label_config.labels, head.thresholds_)]
    return jsonify(model_id=head.model_id, head=head.config.kind, rule=EMOJI_RULE, labels=policy)


def openapi_document():
    """This OpenAPI document."""
    return jsonify(current_app.api_doc)


def health():
    """Whether the server is up, and what it serves: model, index size, device and limits."""
    res = resources()
    served, config, reload = predictor(), res.config, res.last_reload
    calibration = getattr(served, "novelty", None)
    return jsonify(status="ok", model_id=served.store.model_id, index_size=len(served.store),
                   device=str(served.backbone.device), head=served.head.config.kind,
                   labels=served.labels, max_upload_bytes=config.max_upload_bytes,
                   max_files=config.max_files, k_default=config.k_default,
                   last_reload=None if reload is None else {"ok": reload.ok, "at": reload.at},
                   unsure_above=config.unsure_above,
                   novelty_calibration=None if calibration is None else calibration.to_json(),
                   keys_required_for_read=config.require_key_for_read,
                   feedback_count=stored_feedback(),
                   last_retrain=res.retrainer.last if res.retrainer is not None else None)


def api_blueprint() -> APIBlueprint:
    """Gives a fresh /api blueprint (flask-openapi3 keeps per-blueprint state, so one per app)."""
    bp = APIBlueprint("api", __name__, url_prefix="/api", abp_responses=_errors(500))
    predicting, browsing = [Tag(name="predict")], [Tag(name="index")]
    bp.post("/predict", tags=predicting, summary="Emotions and emojis for one or more images",
            responses={200: s.PredictResponse, **{code: s.FailedUpload for code in (400, 413, 415)}})(predict)
    bp.get("/neighbours", tags=browsing, summary="Nearest indexed images to an indexed image",
           responses={200: s.NeighboursResponse, **_errors(400, 404)})(neighbours_of_id)
    bp.post("/neighbours", tags=browsing, summary="Nearest indexed images to an uploaded image",
            responses={200: s.NeighboursResponse, **_errors(400, 413, 415)})(neighbours_of_upload)
    bp.get("/images/<int:image_id>/thumbnail", tags=browsing, summary="Thumbnail of an indexed image",
           responses={200: {"description": "JPEG, cacheable (ETag, Cache-Control)",
                            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                      304: {"description": "Not modified (If-None-Match matched the ETag)"},
                      **_errors(400, 404)})(thumbnail)
    bp.get("/labels", tags=predicting, summary="Labels, thresholds and emoji policy",
           responses={200: s.LabelsResponse})(labels)
    feedback_routes(bp)
    admin_routes(bp)
    bp.get("/openapi.json", tags=[Tag(name="meta")], summary="This OpenAPI document",
           responses={200: {"description": "OpenAPI 3.1 document",
                            "content": {"application/json": {"schema": {"type": "object"}}}}})(openapi_document)
    return bp


def _errors(*codes: int) -> dict:
    return {code: s.ErrorBody for code in codes}


def _k(asked: int | None, minimum: int) -> int:
    _sent_once("k")
    config = resources().config
    k = max(config.k_default, minimum) if asked is None else asked
    if not minimum <= k <= config.k_max:
        abort(400, f"k={k} is out of range; ask for {minimum} to {config.k_max} neighbours")
    return k


def _sent_once(name: str) -> None:
    # The request models see only the first of repeated fields; k=1&k=100 is ambiguous, so refused.
    if len(request.args.getlist(name)) > 1 or len(request.form.getlist(name)) > 1:
        abort(400, f"{name} was sent more than once; send it once")


def _filename(upload, position: int) -> str:
    # Echoed back only, never used as a path; cut so that a hostile name cannot bloat answers.
    return (upload.filename or f"image-{position + 1}")[:200]


def _with_status(result: dict) -> dict:
    if "error" not in result:
        return result
    return {"image": result["image"], "filename": result["image"], "error": result["error"],
            "kind": result["kind"], "status": STATUS_OF_KIND[result["kind"]]}


def _unknown_id(image_id: int) -> str:
    size = len(predictor().store)
    return f"no indexed image has id {image_id}; " + (f"ids run from 0 to {size - 1}" if size else "the index is empty")
