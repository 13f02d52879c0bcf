"""What flask-openapi3 cannot say from the views' signatures, written into the document once at start:
who may call each operation (security and its 401/403), the media types a file part accepts, and the
two bodies of POST /api/feedback. A client generated from the document then sends what the server takes."""
from __future__ import annotations

import re

from flask_openapi3 import OpenAPI

from .auth import ADMIN, READ, RIGHTS
from .config import WebConfig
from .schemas import ErrorBody, FeedbackForm, FeedbackJson

# what embed/images.py and embed/clips.py decode (video with the `video` extra)
IMAGE_TYPES = "image/jpeg, image/png, image/webp, image/gif, image/apng, video/mp4, video/quicktime, video/webm"
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "X-API-Key: KEY"},
}
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
_REFUSALS = {401: "No API key, or one the server does not know", 403: "The key lacks the right (admin)"}


def finish_document(app: OpenAPI, config: WebConfig, labels: list[str] | None) -> None:
    """Completes the app's (cached) OpenAPI document in place; `labels` are the served head's (None: not
    known, the document then names no label)."""
    doc = app.api_doc
    components = doc.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    schemas = components.setdefault("schemas", {})
    schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
    endpoints = {(_openapi_path(rule.rule), method.lower()): rule.endpoint
                 for rule in app.url_map.iter_rules() for method in rule.methods or ()}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            need = RIGHTS.get(endpoints.get((path, method), ""))
            if need is not None and (need != READ or config.require_key_for_read):
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                for code in (401, 403) if need == ADMIN else (401,):
                    operation["responses"][str(code)] = {"description": _REFUSALS[code], "content": _ERROR}
            form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if form is not None:
                _declare_image_part(form)
                if path == "/api/predict":  # a caption is text as typed, never a number or JSON
                    form["encoding"]["caption"] = {"contentType": "text/plain"}
    doc["paths"]["/api/feedback"]["post"]["requestBody"] = _feedback_body(schemas)
    _tighten(doc, config, labels)


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([A-Za-z_]+)>", r"{\1}", rule)


def _declare_image_part(form: dict) -> None:
    encoding = form.setdefault("encoding", {})
    encoding.setdefault("image", {})["contentType"] = IMAGE_TYPES


def _feedback_body(schemas: dict) -> dict:
    bodies = {}
    for model in (FeedbackJson, FeedbackForm):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    form = {"schema": {"$ref": "#/components/schemas/FeedbackForm"}}
    _declare_image_part(form)
    form["encoding"]["labels"] = {"contentType": "text/plain"}
    bodies["application/json"] = {"schema": {"$ref": "#/components/schemas/FeedbackJson"}}
    bodies["multipart/form-data"] = form
    return {"required": True, "description": "JSON for an indexed image, or multipart with the image itself",
            "content": bodies}


def _tighten(doc: dict, config: WebConfig, labels: list[str]) -> None:
    """Says in the document what the server checks: k's range, no null where a form or query cannot send
    one (a text field "null" is not a number), and the label names a correction may use."""
    schemas = doc["components"]["schemas"]
    for name in ("ImageForm", "OneImageForm", "FeedbackForm"):
        for prop in schemas[name]["properties"].values():
            _drop_null(prop)
    schemas["ImageForm"]["properties"]["k"].update(minimum=0, maximum=config.k_max)
    # Several images are several parts of the same name. Declared as an array of files, a generated
    # client (schemathesis among them) sends one part without a filename, which no multipart parser
    # reads as a file, and counts a lone file part as a schema violation though it is what an array of
    # one is on the wire; as one file part whose description says to repeat it, both go right.
    schemas["ImageForm"]["properties"]["image"] = {
        "type": "string", "format": "binary",
        "description": f"an image file (JPEG, PNG, WebP or GIF) or a clip (animated GIF/WebP/PNG; MP4, MOV or "
                       f"WebM); repeat the part, each named 'image', to send up "
                       f"to {config.max_files} images"}
    schemas["OneImageForm"]["properties"]["k"].update(minimum=1, maximum=config.k_max)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                _drop_null(parameter["schema"])
                if parameter["name"] == "k":
                    low = 0 if path == "/api/predict" else 1
                    parameter["schema"].update(type="integer", minimum=low, maximum=config.k_max)
    if not labels:
        return
    schemas["FeedbackJson"]["properties"]["labels"]["items"] = {"type": "string", "enum": list(labels)}
    names = "|".join(re.escape(n) for n in labels)
    schemas["FeedbackForm"]["properties"]["labels"]["pattern"] = rf"^ *({names}) *(, *({names}) *)*$"


def _drop_null(schema: dict) -> None:
    options = schema.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        kept = [o for o in options if o != {"type": "null"}]
        del schema["anyOf"]
        if len(kept) == 1:
            schema.update(kept[0])
        else:
            schema["anyOf"] = kept
        if schema.get("default", 0) is None:
            del schema["default"]
