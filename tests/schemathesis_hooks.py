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

