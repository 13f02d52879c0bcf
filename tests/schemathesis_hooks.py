"""Hooks for the schemathesis CLI run against a live server (SCHEMATHESIS_HOOKS=schemathesis_hooks).

The OpenAPI document declares that an `image` part takes image/jpeg, image/png, image/webp or
image/gif (multipart `encoding.contentType`). schemathesis picks one of those media types for the
part's Content-Type header but, for a multipart part, fills it with arbitrary bytes or any of its
sample files (a PDF, a ZIP) unless a strategy is registered for the media type. These register its
own smallest valid file of each declared type, so that a generated schema-valid request is what the
document promises. Negative generation still sends arbitrary bytes, which the server must refuse.
"""
import schemathesis
from hypothesis import strategies as st
from schemathesis.core.file_samples import MEDIA_TYPE_FILE_SAMPLES

for _media_type, _sample in MEDIA_TYPE_FILE_SAMPLES.items():
    schemathesis.openapi.media_type(_media_type, st.just(_sample))

# The `labels` part of a multipart correction is declared text/plain. Without a strategy of its own,
# schemathesis's coverage phase fills a required text part with "" whatever its pattern, and counts
# that one request as both schema-valid and schema-violating, so that no answer can pass both checks.
schemathesis.openapi.media_type("text/plain", st.sampled_from([b"sad", b"happy,surprise", b" neutral , other "]))



@schemathesis.hook
def before_call(context, case, **kwargs):
    """`/api/predict` takes no caption or exactly one per image: a rule JSON Schema cannot state (two arrays of
    equal length), which the server enforces with a 400. A generated request keeps its captions, cut or padded
    with empty ones to the number of its images, so that a schema-valid request is one the server promises to
    take (a schema-violating one is left alone); the 400 itself is tested in tests/test_post_head.py."""
    body = case.body
    if case.operation.path != "/api/predict" or not isinstance(body, dict) or body.get("caption") is None:
        return
    if case.meta is not None and case.meta.generation.mode.name != "POSITIVE":
        return  # a request meant to break the schema stays as generated
    images = body.get("image")
    count = len(images) if isinstance(images, list) else int(images is not None)
    captions = body["caption"] if isinstance(body["caption"], list) else [body["caption"]]
    body["caption"] = (captions + [""] * count)[:count]


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure but one kind: a "schema-violating" `/api/predict` request with captions that the
    server took. A multipart part carries text whatever was generated for it, so a caption negated to a
    number or an object reaches the server as the text "5" or "{...}", which is a valid caption (the OpenAPI
    document declares the part text/plain). Image and k violations in such a request are still refused and
    are tested without captions."""
    return not (failure.code == "ST201" and case.operation.path == "/api/predict"
                and isinstance(case.body, dict) and case.body.get("caption") is not None)
