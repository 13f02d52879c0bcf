"""The app factory: settings, the predictor (through the config's loader), blueprints, JSON errors."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import fields

from flask import Response, current_app, jsonify, request
from flask_openapi3 import Info, OpenAPI, Tag
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from emoreact import __version__

from .admin import Retrainer
from .api import Resources, api_blueprint, health, release_predictor, resources
from .auth import RIGHTS, check_right, load_api_keys
from .config import WebConfig, describe_size
from .metrics import Metrics, install
from .openapi import finish_document
from .page import page_blueprint
from .schemas import ErrorBody, Health
from .thumbnails import Thumbnails

log = logging.getLogger(__name__)

_DESCRIPTION = """Emotions and emoji reactions for social-media images, from frozen CLIP features.

Every error answers JSON `{"error": "..."}`: 400 bad request (no file, not an image, bad parameter),
401 no or an unknown API key, 403 a key without the right, 404 unknown route or id, 405 wrong method,
409 a retrain already running or the store busy, 413 upload over the size, file-count or pixel limit,
415 a format other than JPEG, PNG, WebP or GIF images and clips (animated GIF/WebP/PNG; MP4, MOV, WebM with
the video extra), 429 too many corrections from one key.
`GET /healthz` tells the limits in force.

Keys: send `Authorization: Bearer KEY` (or `X-API-Key: KEY`). Feedback needs a key, retraining an
admin key; reads are open unless the server runs with `--require-key-for-read`."""

_MAX_TEXT_FIELD = 256 * 1024  # bytes of one text form field (a caption); over werkzeug's 64 KiB read chunk, which it also bounds
_SPARE_FORM_PARTS = 8  # form parts allowed beyond max_files: k, and fields a client adds that are ignored
_MISSING = {  # what to say when a required field is absent
    "image": "no image was sent: attach one or more files in the multipart form field 'image'",
    "id": "no id was given: ask for /api/neighbours?id=ID with the id of an indexed image",
}


def create_app(config: WebConfig | Mapping | None = None) -> OpenAPI:
    """Gives the EmoReact WSGI app; the predictor is loaded here, once, by `config.loader`."""
    config = _as_config(config)
    app = OpenAPI(__name__, info=Info(title="EmoReact API", version=__version__, description=_DESCRIPTION),
                  doc_prefix="/docs", doc_url="/openapi.json", validation_error_status=400,
                  security_schemes={},  # the default, None, is written as `"securitySchemes": null`: invalid OpenAPI
                  validation_error_model=ErrorBody, validation_error_callback=_validation_error)
    # Werkzeug enforces this on every body, streamed (chunked) ones included, before a view reads it.
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    # A form holds at most max_files images, their captions and k; werkzeug stops parsing at the first part over this
    # and answers 413, so thousands of tiny parts cost no more than a normal upload.
    app.config["MAX_FORM_PARTS"] = 2 * config.max_files + _SPARE_FORM_PARTS  # an image and its caption each
    # A text field (a caption) over this answers 413 before it is read whole; a caption is cut to
    # MAX_CAPTION_CHARS characters anyway (embed/texts.py), so this only bounds what is parsed.
    app.config["MAX_FORM_MEMORY_SIZE"] = _MAX_TEXT_FIELD
    app.json.sort_keys = False  # emotion_scores stay in label order, as the CLI prints them
    app.json.ensure_ascii = False  # emojis as emojis
    keys = load_api_keys(config.api_keys) if config.api_keys is not None else ()
    metrics = Metrics()
    install(app, metrics)  # first: a refused request is counted and logged too
    res = app.extensions["emoreact"] = Resources(
        config, config.loader(config),
        Thumbnails(config.thumbnail_px, config.max_pixels, config.thumbnail_cache), metrics=metrics, keys=keys)
    res.retrainer = Retrainer(res)
    metrics.index_size.set_function(lambda: len(res.predictor.store))
    app.before_request(_check_key)
    app.register_api(api_blueprint())
    app.register_api(page_blueprint())
    app.get("/healthz", tags=[Tag(name="meta")], summary="Status, model id, index size, device and limits",
            responses={200: Health})(health)
    app.get("/metrics", tags=[Tag(name="meta")], summary="Prometheus metrics (text format)",
            responses={200: {"description": "Prometheus text exposition format 0.0.4",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})(_metrics)
    app.teardown_appcontext(release_predictor)  # a reload closes the old predictor after its last request
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.after_request(_common_headers)
    finish_document(app, config, getattr(res.predictor, "labels", None))  # tests may serve a stand-in
    return app


def _check_key() -> Response | None:
    need = RIGHTS.get(request.endpoint or "")
    if need is None:
        return None
    res = resources()
    return check_right(res.keys, need, res.config.require_key_for_read)


def _metrics() -> Response:
    """The server's metrics in the Prometheus text format."""
    return resources().metrics.exposition()


def _as_config(config: WebConfig | Mapping | None) -> WebConfig:
    if isinstance(config, WebConfig):
        return config
    given = dict(config or {})
    unknown = set(given) - {f.name for f in fields(WebConfig)}
    if unknown:
        raise ValueError(f"unknown web config key(s) {sorted(unknown)}; "
                         f"known: {[f.name for f in fields(WebConfig)]}")
    return WebConfig(**given)


def _http_error(exc: HTTPException) -> Response:
    if exc.response is not None:  # a view wrote the whole answer (a status with its own headers)
        return exc.response
    response = current_app.json.response({"error": _message(exc)})
    response.status_code = exc.code or 500
    if exc.code == 405:
        response.headers["Allow"] = ", ".join(exc.valid_methods or [])
    return response


def _message(exc: HTTPException) -> str:
    if exc.description and exc.description != type(exc).description:
        return exc.description  # written by a view for this case
    if exc.code == 404:
        return f"there is nothing at {request.path}; the page is at /, the API under /api (see /docs)"
    if exc.code == 405:
        allowed = ", ".join(sorted(set(exc.valid_methods or []) - {"HEAD", "OPTIONS"}))
        return f"{request.method} is not allowed on {request.path}; use {allowed}"
    if exc.code == 413:
        limit = resources().config.max_upload_bytes
        if request.content_length is not None and request.content_length <= limit:
            parts = current_app.config["MAX_FORM_PARTS"]
            return (f"the form has more than {parts} parts or a text field over {describe_size(_MAX_TEXT_FIELD)}; "
                    f"send at most {resources().config.max_files} images in the field 'image', at most one "
                    "caption each in the field 'caption', and k as a number")
        return (f"the upload is larger than the limit of {describe_size(limit)} per request; "
                "send fewer or smaller images")
    return f"{exc.name}: {exc.description}"


def _unexpected_error(exc: Exception) -> Response | tuple[Response, int]:
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    log.exception("unexpected error answering %s %s", request.method, request.path)
    return jsonify(error="the server failed to answer this request; the error has been logged"), 500


def _validation_error(exc: ValidationError) -> Response:
    messages = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        if error["type"] == "missing":
            messages.append(_MISSING.get(field, f"'{field}' is required"))
        else:
            given = error.get("input")
            shown = given if isinstance(given, str) else repr(given)
            messages.append(f"{field}={shown[:40]}: {error['msg']}")
    response = current_app.json.response({"error": "; ".join(messages)})
    response.status_code = 400
    return response


def _common_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response

