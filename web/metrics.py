"""Operating the server: Prometheus metrics at /metrics, a request id on every answer, access log lines.

Each app has its own registry (no process-wide globals), so two apps in one process, as in the
tests, count apart. Endpoints are labelled by their route template (`/api/images/<int:image_id>/thumbnail`),
never by the path asked for, so that the number of series stays bounded.
"""
from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

access_log = logging.getLogger("emoreact.access")
_INCOMING_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a proxy's id is kept when it looks like one
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metrics, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("emoreact_http_requests", "HTTP requests answered, by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("emoreact_http_request_duration_seconds", "Time to answer a request, by endpoint",
                                 ["endpoint"], registry=r)
        self.batch_size = Histogram("emoreact_model_batch_size", "Images per model (backbone) call",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("emoreact_model_batch_seconds", "Time of one model (backbone) call",
                                       registry=r)
        self.index_size = Gauge("emoreact_index_size", "Images in the served embedding store", registry=r)
        self.feedback = Counter("emoreact_feedback", "Corrections stored, by kind (indexed id or upload)",
                                ["kind"], registry=r)
        self.retrains = Counter("emoreact_retrains", "Retrains finished, by outcome (swapped, kept, failed)",
                                ["outcome"], registry=r)
        self.reloads = Counter("emoreact_reloads", "Reloads of store and head, by outcome (ok, failed)",
                               ["outcome"], registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Records one model call; predictors call it (see `Predictor.batch_observer`)."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def exposition(self) -> Response:
        """Gives the registry in the Prometheus text format."""
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def install(app: Flask, metrics: Metrics) -> None:
    """Counts and times every request, gives it an id (X-Request-ID) and writes its access log line."""
    app.before_request(_start)

    @app.after_request
    def finish(response: Response) -> Response:
        started = g.get("started", time.perf_counter())
        seconds = time.perf_counter() - started
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(seconds)
        rid = g.get("request_id") or _request_id()
        response.headers["X-Request-ID"] = rid
        access_log.info('%s "%s %s" %d %d %.1fms key=%s rid=%s', request.remote_addr or "-", request.method,
                        request.full_path.rstrip("?"), response.status_code, response.calculate_content_length() or 0,
                        seconds * 1000, g.get("key_name") or "-", rid)
        return response


def _start() -> None:
    g.started = time.perf_counter()
    g.request_id = _request_id()


def _request_id() -> str:
    incoming = request.headers.get("X-Request-ID", "")
    return incoming if _INCOMING_ID.fullmatch(incoming) else uuid.uuid4().hex
