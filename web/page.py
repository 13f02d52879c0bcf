"""The moderator's upload page and the way to the API docs."""
from __future__ import annotations

from flask import redirect, render_template
from flask_openapi3 import APIBlueprint, Tag

from .api import resources

# Everything the page loads comes from this server: no CDN, no inline script.
# media-src blob:: a clip's preview and its frame strip play the uploaded file itself.
_PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; style-src 'self'; "
             "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def index():
    """The upload page: drop images, see emotions, emojis and the nearest indexed images."""
    res = resources()
    html = render_template("index.html", config=res.config, model_id=res.predictor.store.model_id)
    return html, 200, {"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-cache"}


def docs():
    """The API documentation (Swagger UI, served from this server)."""
    return redirect("/docs/swagger", code=302)


def page_blueprint() -> APIBlueprint:
    """Gives a fresh blueprint for the page and /docs."""
    bp = APIBlueprint("page", __name__)
    html = {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
    bp.get("/", tags=[Tag(name="page")], summary="The upload page", responses={200: html})(index)
    bp.get("/docs", tags=[Tag(name="meta")], summary="API docs (redirects to Swagger UI)",
           responses={302: {"description": "to /docs/swagger"}})(docs)
    return bp
